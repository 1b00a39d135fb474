// File: mcx/context/chunk_header.h
//
// The 8-byte word that kinds with per-chunk headers store immediately before
// every chunk they hand out. It is what lets `mcx::Free(p)` work without a
// context: the low four bits name the kind, and the kind finds the rest.
//
// Layout of the 64-bit word (bit 0 is the lowest address on little-endian,
// so garbage patterns written byte-wise land in the kind id):
//
//   bits  0..3   kind id (kChunkKind*). Ids that memory commonly holds when it
//                was never an mcx chunk are reserved and always rejected:
//                0 (zeroed memory), 1..5 (glibc malloc's size-field flag
//                bits), 14 (0x7E, the checking build's sentinel byte) and 15
//                (0x7F clobbered memory, 0xFF-filled memory).
//   bit   4      external: the chunk fills a dedicated block of its own
//   bit   5      free: the chunk is on a freelist (catches a double free)
//   bits  6..7   zero
//   bits  8..15  kind-defined value (a size class, or log2 of an alignment)
//   bits 16..31  kChunkMagic, a second check against stray pointers
//   bits 32..63  byte offset from the owning block's header to this word
//
// Interface: MakeChunkHeader, ChunkHeaderKind, ChunkHeaderValue,
// ChunkHeaderOffset, ChunkHeaderIsFree, ChunkHeaderIsExternal,
// ChunkHeaderMagicOk, ReadChunkHeader, WriteChunkHeader.

#ifndef MCX_CONTEXT_CHUNK_HEADER_H_
#define MCX_CONTEXT_CHUNK_HEADER_H_

#include <cstdint>
#include <cstring>

#include "mcx/context/internal/sanitizer.h"

namespace mcx {

inline constexpr unsigned kChunkKindBits = 4;
inline constexpr unsigned kNumChunkKinds = 1u << kChunkKindBits;

// Kind ids. Reserved ids are listed so nobody hands them out.
inline constexpr uint8_t kChunkKindReservedZero = 0;
inline constexpr uint8_t kChunkKindReservedGlibcLast = 5;
inline constexpr uint8_t kChunkKindAlignedRedirect = 6;  // see chunk.h
inline constexpr uint8_t kChunkKindFreelist = 7;
inline constexpr uint8_t kChunkKindPoolChecking = 8;  // pool chunks, checking builds
// Id 9 is free for new kinds.
inline constexpr uint8_t kChunkKindSlab = 10;  // slab kind: dedicated chunks; objects in
                                               // checking builds (slab/slab.h)
inline constexpr uint8_t kChunkKindGeneration = 11;  // generation kind (generation/generation.h)
// Ids 12..13 are free for new kinds (examples/slab_kind takes 13).
inline constexpr uint8_t kChunkKindReservedSentinel = 14;
inline constexpr uint8_t kChunkKindReservedWiped = 15;

inline constexpr bool IsReservedChunkKind(unsigned id) {
  return id <= kChunkKindReservedGlibcLast ||
         id >= kChunkKindReservedSentinel;
}

inline constexpr uint64_t kChunkKindMask = kNumChunkKinds - 1;
inline constexpr uint64_t kChunkExternalBit = uint64_t{1} << 4;
inline constexpr uint64_t kChunkFreeBit = uint64_t{1} << 5;
inline constexpr unsigned kChunkValueShift = 8;
inline constexpr uint64_t kChunkValueMask = 0xFF;
inline constexpr unsigned kChunkMagicShift = 16;
inline constexpr uint64_t kChunkMagic = 0x6D63;  // "mc"
inline constexpr uint64_t kChunkMagicMask = uint64_t{0xFFFF} << kChunkMagicShift;
inline constexpr unsigned kChunkOffsetShift = 32;
inline constexpr uint64_t kMaxChunkOffset = 0xFFFFFFFFu;

inline constexpr uint64_t MakeChunkHeader(uint8_t kind, bool external,
                                          uint8_t value, uint64_t offset) {
  return uint64_t{kind} | (external ? kChunkExternalBit : 0) |
         (uint64_t{value} << kChunkValueShift) |
         (kChunkMagic << kChunkMagicShift) | (offset << kChunkOffsetShift);
}

inline constexpr unsigned ChunkHeaderKind(uint64_t h) {
  return static_cast<unsigned>(h & kChunkKindMask);
}
inline constexpr uint8_t ChunkHeaderValue(uint64_t h) {
  return static_cast<uint8_t>((h >> kChunkValueShift) & kChunkValueMask);
}
inline constexpr uint64_t ChunkHeaderOffset(uint64_t h) {
  return h >> kChunkOffsetShift;
}
inline constexpr bool ChunkHeaderIsFree(uint64_t h) {
  return (h & kChunkFreeBit) != 0;
}
inline constexpr bool ChunkHeaderIsExternal(uint64_t h) {
  return (h & kChunkExternalBit) != 0;
}
inline constexpr bool ChunkHeaderMagicOk(uint64_t h) {
  return ((h & kChunkMagicMask) >> kChunkMagicShift) == kChunkMagic;
}

// The header word of the chunk at `p` (which must be 8 bytes past its start).
// memcpy keeps strict aliasing happy and compiles to one load. Under ASan,
// headers stay poisoned so that a write past the previous chunk is reported;
// these accessors lift the poison for their own access only.
inline uint64_t ReadChunkHeader(const void* p) {
  uint64_t h;
  const char* at = static_cast<const char*>(p) - sizeof(h);
  if ((internal::kAddressSanitizer || internal::kValgrind) && internal::IsPoisoned(at, sizeof(h))) {
    internal::UnpoisonMemoryRegion(at, sizeof(h));
    std::memcpy(&h, at, sizeof(h));
    internal::PoisonMemoryRegion(at, sizeof(h));
    return h;
  }
#if MCX_SANITIZE_THREAD
  // A free from another thread writes a waiting chunk's header while the
  // owner's sweep may read it (remote_free.h): one aligned word, read and
  // written whole, which ThreadSanitizer is told as relaxed atomics.
  if (reinterpret_cast<uintptr_t>(at) % alignof(uint64_t) == 0) {
    return __atomic_load_n(reinterpret_cast<const uint64_t*>(at), __ATOMIC_RELAXED);
  }
#endif
  std::memcpy(&h, at, sizeof(h));
  return h;
}

inline void WriteChunkHeader(void* p, uint64_t h) {
  char* at = static_cast<char*>(p) - sizeof(h);
  internal::UnpoisonMemoryRegion(at, sizeof(h));
#if MCX_SANITIZE_THREAD
  if (reinterpret_cast<uintptr_t>(at) % alignof(uint64_t) == 0) {
    __atomic_store_n(reinterpret_cast<uint64_t*>(at), h, __ATOMIC_RELAXED);
    return;
  }
#endif
  std::memcpy(at, &h, sizeof(h));
  internal::PoisonMemoryRegion(at, sizeof(h));
}

}  // namespace mcx

#endif  // MCX_CONTEXT_CHUNK_HEADER_H_
