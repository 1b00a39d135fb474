// AppendFormat (internal/format.h): the kinds' diagnostics, formatted
// without Abseil's str_format library.

#include "mcx/context/internal/format.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mcx {
namespace internal {
namespace {

// Digits of `value` in `base` (8, 10 or 16), most significant first.
std::string Digits(uint64_t value, unsigned base, bool upper) {
  const char* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  char buffer[64];
  size_t i = sizeof(buffer);
  do {
    buffer[--i] = digits[value % base];
    value /= base;
  } while (value != 0);
  return std::string(buffer + i, sizeof(buffer) - i);
}

// The magnitude of a signed value, without overflow for INT64_MIN.
uint64_t Magnitude(int64_t value) {
  return value < 0 ? ~static_cast<uint64_t>(value) + 1 : static_cast<uint64_t>(value);
}

// A pointer as glibc's (and absl's) %p: 0x and lowercase hex; (nil) for null.
std::string PointerText(const volatile void* p) {
  if (p == nullptr) return "(nil)";
  return "0x" + Digits(reinterpret_cast<uintptr_t>(p), 16, false);
}

// An argument in its own form: integers in decimal, pointers as %p,
// strings as they are.
std::string Natural(const FormatArg& arg) {
  switch (arg.type()) {
    case FormatArg::Type::kSigned:
      return (arg.signed_value() < 0 ? "-" : "") + Digits(Magnitude(arg.signed_value()), 10, false);
    case FormatArg::Type::kUnsigned:
      return Digits(arg.unsigned_value(), 10, false);
    case FormatArg::Type::kPointer:
      return PointerText(arg.pointer());
    case FormatArg::Type::kString:
      break;
  }
  return std::string(arg.string());
}

bool IsInteger(const FormatArg& arg) {
  return arg.type() == FormatArg::Type::kSigned || arg.type() == FormatArg::Type::kUnsigned;
}

// An integer's bits, as %x and %o read them (two's complement if negative).
uint64_t Bits(const FormatArg& arg) {
  return arg.type() == FormatArg::Type::kSigned ? static_cast<uint64_t>(arg.signed_value())
                                                : arg.unsigned_value();
}

// `arg` converted by `conversion`.
std::string Convert(char conversion, const FormatArg& arg) {
  switch (conversion) {
    case 'x':
    case 'X':
    case 'o':
      if (!IsInteger(arg)) break;
      return Digits(Bits(arg), conversion == 'o' ? 8 : 16, conversion == 'X');
    case 'c':
      if (!IsInteger(arg)) break;
      return std::string(1, static_cast<char>(Bits(arg)));
    case 'p':
      if (arg.type() == FormatArg::Type::kPointer) return PointerText(arg.pointer());
      if (IsInteger(arg)) return PointerText(reinterpret_cast<const void*>(Bits(arg)));
      break;
    default:  // d, i, u, s
      break;
  }
  return Natural(arg);
}

}  // namespace

void AppendFormatArgs(std::string* out, const char* format, const FormatArg* args,
                      size_t count) {
  size_t next = 0;  // the next argument
  const char* p = format;
  while (*p != '\0') {
    if (*p != '%') {
      const char* run = p;
      while (*p != '\0' && *p != '%') ++p;
      out->append(run, static_cast<size_t>(p - run));
      continue;
    }
    const char* spec = p++;  // '%'
    if (*p == '%') {
      out->push_back('%');
      ++p;
      continue;
    }
    bool left = false;
    bool zero = false;
    for (; *p == '-' || *p == '0'; ++p) {
      if (*p == '-') {
        left = true;
      } else {
        zero = true;
      }
    }
    size_t width = 0;
    for (; *p >= '0' && *p <= '9'; ++p) width = width * 10 + static_cast<size_t>(*p - '0');
    while (*p == 'h' || *p == 'l' || *p == 'j' || *p == 'z' || *p == 't' || *p == 'L') ++p;
    const char conversion = *p;
    const bool known = conversion != '\0' && std::string_view("diuxXopsc").find(conversion) !=
                                                 std::string_view::npos;
    if (!known || next == count) {
      // Copied as written; a conversion character (if any) with it.
      if (conversion != '\0') ++p;
      out->append(spec, static_cast<size_t>(p - spec));
      continue;
    }
    ++p;
    const FormatArg& arg = args[next++];
    std::string text = Convert(conversion, arg);
    if (text.size() >= width) {
      *out += text;
    } else if (left) {
      *out += text;
      out->append(width - text.size(), ' ');
    } else if (zero && IsInteger(arg) && conversion != 'c' && conversion != 's') {
      // Zeros after the sign.
      size_t sign = !text.empty() && text[0] == '-' ? 1 : 0;
      out->append(text, 0, sign);
      out->append(width - text.size(), '0');
      out->append(text, sign, std::string::npos);
    } else {
      out->append(width - text.size(), ' ');
      *out += text;
    }
  }
}

}  // namespace internal
}  // namespace mcx
