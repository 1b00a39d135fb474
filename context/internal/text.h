// Internal to mcx; do not include from outside.
// IWYU pragma: private
//
// Context names in reports. Names are C strings that nobody checked: the
// reports make them valid text for their format. The text report
// (StatsReport's kText, DumpStats, the dump on failure) shows each name on
// its own line, so a name must never break a line or hide what follows it:
// its bytes are escaped C-style, and valid UTF-8 is left readable.
//
// Interface:
//   Utf8SequenceLength  the well-formed UTF-8 sequence at a byte, if any
//   AppendTextName      a name escaped for the text report, piece by piece

#ifndef MCX_CONTEXT_INTERNAL_TEXT_H_
#define MCX_CONTEXT_INTERNAL_TEXT_H_

#include <cstddef>

namespace mcx {
namespace internal {

// The length of the well-formed UTF-8 sequence (RFC 3629: no overlong forms,
// no surrogates, nothing above U+10FFFF) that starts at `p`, or 0 if none
// does. Reads no further than the first byte that ends the sequence, so a
// NUL terminator is never passed.
inline size_t Utf8SequenceLength(const unsigned char* p) {
  const unsigned char c = p[0];
  if (c < 0x80) return 1;
  auto cont = [](unsigned char b) { return (b & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) return cont(p[1]) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    const unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    return p[1] >= lo && p[1] <= hi && cont(p[2]) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    const unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    return p[1] >= lo && p[1] <= hi && cont(p[2]) && cont(p[3]) ? 4 : 0;
  }
  return 0;
}

// Bytes of the longest escape of one byte: "\xNN".
inline constexpr size_t kMaxTextEscapeBytes = 4;

// AppendTextName
//
// Calls `append(const char* data, size_t size)` with the pieces that show
// `name` in the text report:
//   - `\\` for a backslash, `\n`, `\t` and `\r` for those controls;
//   - `\xNN` (two lowercase hex digits) for every other byte of a control
//     character (U+0000..U+001F, U+007F, and the C1 controls U+0080..U+009F,
//     which some terminals obey) and for every byte that starts no
//     well-formed UTF-8 sequence;
//   - every other byte as it is: printable ASCII and valid UTF-8 stay
//     readable.
// The result holds no control character and is unambiguous (a backslash
// always starts an escape). Allocates nothing: DumpStats uses it.
template <typename Append>
void AppendTextName(const char* name, Append&& append) {
  static constexpr char kHexDigits[] = "0123456789abcdef";
  const char* run = name;  // first byte not yet appended
  const char* p = name;
  while (*p != '\0') {
    const unsigned char c = static_cast<unsigned char>(*p);
    const size_t n = Utf8SequenceLength(reinterpret_cast<const unsigned char*>(p));
    const bool c1_control = n == 2 && c == 0xC2 && static_cast<unsigned char>(p[1]) < 0xA0;
    if (n != 0 && !c1_control && c >= 0x20 && c != 0x7F && c != '\\') {
      p += n;
      continue;
    }
    if (p != run) append(run, static_cast<size_t>(p - run));
    // A malformed byte alone, or every byte of a control character.
    const size_t escaped = n == 0 ? 1 : n;
    for (size_t i = 0; i < escaped; ++i) {
      const unsigned char b = static_cast<unsigned char>(p[i]);
      char e[kMaxTextEscapeBytes] = {'\\', 'x', kHexDigits[b >> 4], kHexDigits[b & 0xF]};
      size_t size = kMaxTextEscapeBytes;
      const char named = b == '\\' ? '\\' : b == '\n' ? 'n' : b == '\t' ? 't' : b == '\r' ? 'r' : 0;
      if (named != 0) {
        e[1] = named;
        size = 2;
      }
      append(e, size);
    }
    p += escaped;
    run = p;
  }
  if (p != run) append(run, static_cast<size_t>(p - run));
}

}  // namespace internal
}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_TEXT_H_
