// Internal to mcx; do not include from outside.
// IWYU pragma: private
//
// Formatting into a std::string for the kinds' diagnostics (the messages of
// their `check` methods), with the calling convention of Abseil's
// `absl::StrAppendFormat` and the subset of its conversions they use. Why
// not Abseil's: its str_format library and what it needs are nine libraries
// at link time, which every C program using one kind would then link for a
// few error messages (README: "What a C program links").
//
// Like absl::StrAppendFormat (and unlike printf), each argument's type decides
// how it is read: `%d` prints any integer type (size_t, uint64_t, int, ...),
// `%x` any integer in hexadecimal, `%p` any pointer, `%s` a C string, a
// std::string or a std::string_view. Flags `-` and `0` and a width are
// understood (`%016x`); length modifiers (`l`, `z`, ...) are accepted and
// ignored. What absl would refuse at compile time is printed as well as it
// can be instead: an argument that does not match its conversion is printed
// in its own form (an integer in decimal, a pointer as %p, a string as is),
// and a conversion with no argument left, or an unknown one, is copied as
// written.
//
// Interface:
//   AppendFormat   appends `format` with its arguments to a std::string

#ifndef MCX_CONTEXT_INTERNAL_FORMAT_H_
#define MCX_CONTEXT_INTERNAL_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

namespace mcx {
namespace internal {

// One argument, as AppendFormat reads it.
class FormatArg {
 public:
  enum class Type { kSigned, kUnsigned, kPointer, kString };

  template <typename T, std::enable_if_t<std::is_integral_v<T> && std::is_signed_v<T>, int> = 0>
  FormatArg(T value) : type_(Type::kSigned), signed_(value) {}  // NOLINT: implicit by design
  template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_signed_v<T>, int> = 0>
  FormatArg(T value) : type_(Type::kUnsigned), unsigned_(value) {}  // NOLINT
  // Any pointer but a C string.
  template <typename T,
            std::enable_if_t<!std::is_same_v<std::remove_cv_t<T>, char>, int> = 0>
  FormatArg(T* pointer) : type_(Type::kPointer), pointer_(pointer) {}  // NOLINT
  FormatArg(std::nullptr_t) : type_(Type::kPointer), pointer_(nullptr) {}  // NOLINT
  FormatArg(const char* s) : FormatArg(std::string_view(s != nullptr ? s : "(null)")) {}  // NOLINT
  FormatArg(const std::string& s) : FormatArg(std::string_view(s)) {}  // NOLINT
  FormatArg(std::string_view s) : type_(Type::kString), string_{s.data(), s.size()} {}  // NOLINT

  Type type() const { return type_; }
  int64_t signed_value() const { return signed_; }
  uint64_t unsigned_value() const { return unsigned_; }
  const volatile void* pointer() const { return pointer_; }
  std::string_view string() const { return std::string_view(string_.data, string_.size); }

 private:
  struct Chars {
    const char* data;
    size_t size;
  };
  Type type_;
  union {
    int64_t signed_;
    uint64_t unsigned_;
    const volatile void* pointer_;
    Chars string_;
  };
};

// The work of AppendFormat: `count` arguments in `args`.
void AppendFormatArgs(std::string* out, const char* format, const FormatArg* args,
                      size_t count);

// AppendFormat
//
// Appends `format` to `*out`, each conversion replaced by the next argument
// (see above).
template <typename... Args>
void AppendFormat(std::string* out, const char* format, const Args&... args) {
  const FormatArg list[sizeof...(Args) + 1] = {FormatArg(args)..., FormatArg(0)};
  AppendFormatArgs(out, format, list, sizeof...(Args));
}

}  // namespace internal
}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_FORMAT_H_
