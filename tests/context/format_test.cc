// AppendFormat (mcx/context/internal/format.h): the kinds' diagnostics,
// formatted as absl::StrAppendFormat formats them, without linking Abseil's
// str_format library.

#include "mcx/context/internal/format.h"

#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <string_view>

#include "gtest/gtest.h"

namespace mcx {
namespace internal {
namespace {

template <typename... Args>
std::string Format(const char* format, const Args&... args) {
  std::string out = "<";
  AppendFormat(&out, format, args...);
  return out;
}

// The conversions the kinds use, with the types they pass: %d takes any
// integer type, as absl's does.
TEST(AppendFormatTest, TheKindsConversions) {
  const size_t blocks = 3;
  const uint64_t header = 0x12ab;
  EXPECT_EQ(Format("pool '%s': %d blocks on the lists but %d accounted\n", "p", blocks, 4),
            "<pool 'p': 3 blocks on the lists but 4 accounted\n");
  EXPECT_EQ(Format("header 0x%016x", header), "<header 0x00000000000012ab");
  EXPECT_EQ(Format("%d %d %d", int8_t{-5}, std::numeric_limits<int64_t>::min(),
                   std::numeric_limits<uint64_t>::max()),
            "<-5 -9223372036854775808 18446744073709551615");
  EXPECT_EQ(Format("%u %i %X %o %c", 7u, -7, 255, 8, 'z'), "<7 -7 FF 10 z");
}

// %p as glibc's printf and absl print it: 0x and lowercase hex; (nil).
TEST(AppendFormatTest, Pointers) {
  int x = 0;
  char expected[64];
  std::snprintf(expected, sizeof(expected), "<%p", static_cast<void*>(&x));
  EXPECT_EQ(Format("%p", &x), expected);
  const void* null = nullptr;
  EXPECT_EQ(Format("%p %p", null, nullptr), "<(nil) (nil)");
}

// Strings of every kind; a null C string does not crash.
TEST(AppendFormatTest, Strings) {
  const std::string s = "std";
  char mutable_chars[] = "chars";
  const char* null = nullptr;
  EXPECT_EQ(Format("%s|%s|%s|%s|%s", "literal", s, std::string_view("view"), mutable_chars, null),
            "<literal|std|view|chars|(null)");
}

// Width, '0' and '-' flags; length modifiers are accepted and ignored.
TEST(AppendFormatTest, WidthFlagsAndLengthModifiers) {
  EXPECT_EQ(Format("[%5d][%-5d][%05d][%05d]", 42, 42, 42, -42), "<[   42][42   ][00042][-0042]");
  EXPECT_EQ(Format("[%8s][%-4s|]", "ab", "ab"), "<[      ab][ab  |]");
  EXPECT_EQ(Format("%zu %lu %lld %hx", size_t{1}, 2ul, 3ll, 255), "<1 2 3 ff");
  EXPECT_EQ(Format("[%1d]", 12345), "<[12345]");  // never cut
}

// What absl refuses at compile time is printed as well as it can be: an
// argument in its own form, a conversion without an argument as written.
TEST(AppendFormatTest, MismatchesAndMissingArguments) {
  EXPECT_EQ(Format("%s and %x", 12, "text"), "<12 and text");
  EXPECT_EQ(Format("%d of %d", 1), "<1 of %d");
  EXPECT_EQ(Format("100%% and %q and %", 5), "<100% and %q and %");
  EXPECT_EQ(Format("no conversions"), "<no conversions");
}

}  // namespace
}  // namespace internal
}  // namespace mcx
