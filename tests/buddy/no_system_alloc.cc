#include "tests/buddy/no_system_alloc.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <unwind.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <new>

#include "absl/base/config.h"

#if defined(__GLIBC__) && !defined(ABSL_HAVE_ADDRESS_SANITIZER) && \
    !defined(ABSL_HAVE_THREAD_SANITIZER) && !defined(ABSL_HAVE_MEMORY_SANITIZER) && \
    !defined(ABSL_HAVE_HWADDRESS_SANITIZER)
#define NO_SYSTEM_ALLOC_REPLACES 1
#else
#define NO_SYSTEM_ALLOC_REPLACES 0
#endif

namespace no_system_alloc {
namespace {

// --- What each function of the program is -----------------------------------

enum Kind : uint8_t {
  kNeutral,    // runtimes, std::, absl::, the harness: look further up
  kMcx,        // mcx code: an allocation here is a finding
  kOther,      // the test, GoogleTest: its allocations are allowed
  kContract,   // mcx::StatsReport, ...: returns a result on the heap by contract
  kException,  // __cxa_allocate_exception
  kMessage,    // the constructors of std::logic_error and std::runtime_error
};

constexpr const char* kExceptionAllocators[] = {"__cxa_allocate_exception",
                                                "__cxa_allocate_dependent_exception"};

// The constructors that copy an exception's message (every standard
// exception with one is built on these two): libstdc++ allocates the copy.
constexpr const char* kMessageConstructors[] = {
    "_ZNSt11logic_errorC1EPKc",
    "_ZNSt11logic_errorC1ERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE",
    "_ZNSt13runtime_errorC1EPKc",
    "_ZNSt13runtime_errorC1ERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE",
};

struct Range {
  uintptr_t start;
  uintptr_t end;
  const char* name;
  Kind kind;
};

bool StartsWith(const char* s, const char* prefix) {
  return std::strncmp(s, prefix, std::strlen(prefix)) == 0;
}

// Whether `name` is the constructor `c1` names (its "C1" form) or its base
// object form ("C2"): the same code, which a library may name either way.
bool IsConstructor(const char* name, const char* c1) {
  const size_t n = std::strlen(c1);
  if (std::strlen(name) != n) return false;
  const size_t at = static_cast<size_t>(std::strstr(c1, "C1E") - c1) + 1;
  return std::strncmp(name, c1, at) == 0 && (name[at] == '1' || name[at] == '2') &&
         std::strcmp(name + at + 1, c1 + at + 1) == 0;
}

// From the mangled name (Itanium ABI): the outermost namespace of a nested
// name, looking through local entities (lambdas: _ZZ<function>E...) and
// cv- and ref-qualifiers.
Kind Classify(const char* name) {
  static const char* const kAllocator[] = {"malloc", "free", "calloc", "realloc", "memalign",
                                           "aligned_alloc", "posix_memalign", "valloc",
                                           "pvalloc"};
  for (const char* a : kAllocator) {
    if (std::strcmp(name, a) == 0) return kNeutral;
  }
  for (const char* e : kExceptionAllocators) {
    if (std::strcmp(name, e) == 0) return kException;
  }
  for (const char* m : kMessageConstructors) {
    if (IsConstructor(name, m)) return kMessage;
  }
  if (StartsWith(name, "mcx_")) return kMcx;  // the C API
  if (!StartsWith(name, "_Z")) return kOther;
  const char* p = name + 2;
  if (StartsWith(p, "nw") || StartsWith(p, "na") || StartsWith(p, "dl") || StartsWith(p, "da") ||
      StartsWith(p, "St")) {
    return kNeutral;  // operator new and delete; ::std functions
  }
  if (*p == 'Z') ++p;  // a local entity: its enclosing function decides
  if (*p != 'N') return kOther;
  ++p;
  while (*p == 'r' || *p == 'V' || *p == 'K') ++p;
  if (*p == 'R' || *p == 'O') ++p;
  if (StartsWith(p, "St") || StartsWith(p, "9__gnu_cxx") || StartsWith(p, "4absl") ||
      StartsWith(p, "10__cxxabiv1") || StartsWith(p, "15no_system_alloc")) {
    return kNeutral;
  }
  if (StartsWith(p, "3mcx")) {
    p += 4;
    if (StartsWith(p, "7testing") || StartsWith(p, "4test")) return kOther;
    // Calls whose result lives on the C++ heap by contract: the reports
    // (std::string), SummarizeLiveChunks and the collecting InspectContext
    // (std::vector), and the members of those results (their destructors);
    // not InspectContext with a visitor, which allocates nothing.
    for (const char* c : {"11StatsReport", "9DotReport", "16LiveChunksReport",
                          "19SummarizeLiveChunks", "13ContextLayout", "16LiveChunkSummary"}) {
      if (StartsWith(p, c)) return kContract;
    }
    if (std::strcmp(p, "14InspectContextEPKNS_7ContextE") == 0) return kContract;
    // A callable cleanup's Run is the program's callable, which an
    // optimizer inlines there: what it allocates, the program does.
    if (StartsWith(p, "8internal15CallableCleanup")) return kOther;
    return kMcx;
  }
  return kOther;
}

// --- The symbol tables, read once with mmap ------------------------------------

struct Object {
  const char* path;
  uintptr_t bias;
  const Elf64_Sym* syms = nullptr;
  size_t nsyms = 0;
  const char* strtab = nullptr;
};

constexpr int kMaxObjects = 128;
Object objects[kMaxObjects];
int num_objects = 0;
Range* ranges = nullptr;
size_t num_ranges = 0;
bool prepared = false;
char self_path[] = "/proc/self/exe";

// System libraries are runtimes: their frames are passed over.
bool IsSystemLibrary(const char* path) {
  return path[0] == '\0' ? false
         : StartsWith(path, "/lib") || StartsWith(path, "/usr/lib") ||
               std::strchr(path, '/') == nullptr;  // linux-vdso.so.1
}

int AddObject(struct dl_phdr_info* info, size_t, void*) {
  const char* path = info->dlpi_name;
  if (num_objects == kMaxObjects || IsSystemLibrary(path)) return 0;
  Object& o = objects[num_objects];
  o.path = path[0] == '\0' ? self_path : path;
  o.bias = info->dlpi_addr;
  const int fd = open(o.path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size < static_cast<off_t>(sizeof(Elf64_Ehdr))) {
    close(fd);
    return 0;
  }
  void* map = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) return 0;
  const auto* base = static_cast<const unsigned char*>(map);
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(base);
  if (std::memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64) {
    return 0;
  }
  const auto* sh = reinterpret_cast<const Elf64_Shdr*>(base + eh->e_shoff);
  const Elf64_Shdr* symtab = nullptr;
  for (int i = 0; i < eh->e_shnum; ++i) {
    if (sh[i].sh_type == SHT_SYMTAB) symtab = &sh[i];
  }
  for (int i = 0; i < eh->e_shnum && symtab == nullptr; ++i) {
    if (sh[i].sh_type == SHT_DYNSYM) symtab = &sh[i];
  }
  if (symtab == nullptr) return 0;
  o.syms = reinterpret_cast<const Elf64_Sym*>(base + symtab->sh_offset);
  o.nsyms = symtab->sh_size / sizeof(Elf64_Sym);
  o.strtab = reinterpret_cast<const char*>(base + sh[symtab->sh_link].sh_offset);
  ++num_objects;
  return 0;
}

bool IsFunction(const Elf64_Sym& s) {
  const int type = ELF64_ST_TYPE(s.st_info);
  return (type == STT_FUNC || type == STT_GNU_IFUNC) && s.st_shndx != SHN_UNDEF && s.st_size > 0;
}

void AddRange(uintptr_t start, uintptr_t size, const char* name, Kind kind) {
  ranges[num_ranges++] = Range{start, start + size, name, kind};
}

const Range* Lookup(uintptr_t addr) {
  const Range* begin = ranges;
  const Range* end = ranges + num_ranges;
  const Range* r = std::upper_bound(begin, end, addr,
                                    [](uintptr_t a, const Range& x) { return a < x.start; });
  if (r == begin) return nullptr;
  --r;
  return addr < r->end ? r : nullptr;
}

// --- Screening each call ------------------------------------------------------

std::atomic<bool> armed{false};
std::atomic<uint64_t> allowed_calls{0};
std::atomic<uint64_t> exception_calls{0};
std::atomic<uint64_t> message_calls{0};
thread_local bool in_screen = false;

struct Trace {
  uintptr_t ips[64];
  int n = 0;
};

_Unwind_Reason_Code Collect(struct _Unwind_Context* ctx, void* arg) {
  auto* t = static_cast<Trace*>(arg);
  if (t->n == 64) return _URC_END_OF_STACK;
  t->ips[t->n++] = static_cast<uintptr_t>(_Unwind_GetIP(ctx));
  return _URC_NO_REASON;
}

void Write(const char* s) { (void)!write(STDERR_FILENO, s, std::strlen(s)); }

[[noreturn]] void Finding(const char* fn, size_t size, const Trace& t) {
  char line[160];
  std::snprintf(line, sizeof line,
                "no_system_alloc: %s(%zu) on behalf of mcx, with the system allocator poisoned; "
                "frames:\n",
                fn, size);
  Write(line);
  for (int i = 0; i < t.n; ++i) {
    const Range* r = Lookup(t.ips[i] - 1);
    if (r == nullptr) continue;
    Write("  ");
    Write(r->name);
    Write(r->kind == kMcx ? "   <- mcx\n" : "\n");
  }
  std::abort();
}

enum Verdict { kAllow, kNull };

// Unused where the replacements are off (sanitizer builds).
[[maybe_unused]] Verdict Screen(const char* fn, size_t size) {
  if (!armed.load(std::memory_order_relaxed) || in_screen) return kAllow;
  in_screen = true;
  Trace t;
  _Unwind_Backtrace(&Collect, &t);
  Kind decisive = kNeutral;
  int at = 0;
  for (; at < t.n; ++at) {
    const Range* r = Lookup(t.ips[at] - 1);
    if (r != nullptr && r->kind != kNeutral) {
      decisive = r->kind;
      break;
    }
  }
  if (decisive == kMcx) {
    for (int i = at + 1; i < t.n; ++i) {
      const Range* r = Lookup(t.ips[i] - 1);
      if (r != nullptr && r->kind == kContract) decisive = kContract;
    }
  }
  in_screen = false;
  switch (decisive) {
    case kMcx:
      Finding(fn, size, t);
    case kException:
      exception_calls.fetch_add(1, std::memory_order_relaxed);
      return kNull;
    case kMessage:
      message_calls.fetch_add(1, std::memory_order_relaxed);
      return kAllow;
    default:
      allowed_calls.fetch_add(1, std::memory_order_relaxed);
      return kAllow;
  }
}

}  // namespace

bool Active() { return NO_SYSTEM_ALLOC_REPLACES != 0; }

bool Prepare() {
  if (prepared) return true;
  if (!Active()) {
    Write("no_system_alloc: not in this build (a sanitizer owns malloc)\n");
    return false;
  }
  dl_iterate_phdr(&AddObject, nullptr);
  size_t total = std::size(kExceptionAllocators) + std::size(kMessageConstructors);
  for (int i = 0; i < num_objects; ++i) total += objects[i].nsyms;
  void* mem = mmap(nullptr, total * sizeof(Range), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return false;
  ranges = static_cast<Range*>(mem);
  for (int i = 0; i < num_objects; ++i) {
    const Object& o = objects[i];
    for (size_t k = 0; k < o.nsyms; ++k) {
      const Elf64_Sym& s = o.syms[k];
      if (!IsFunction(s)) continue;
      const char* name = o.strtab + s.st_name;
      const Kind kind = Classify(name);
      if (kind != kNeutral) AddRange(o.bias + s.st_value, s.st_size, name, kind);
    }
  }
  // libstdc++'s exception allocators and message constructors, when it is
  // a shared library (its frames are otherwise passed over).
  auto add_runtime = [](const char* name, Kind kind) {
    void* fn = dlsym(RTLD_DEFAULT, name);
    Dl_info info;
    void* entry = nullptr;
    if (fn != nullptr && dladdr1(fn, &info, &entry, RTLD_DL_SYMENT) != 0) {
      const auto* sym = static_cast<const ElfW(Sym)*>(entry);
      if (sym != nullptr && sym->st_size > 0) {
        AddRange(reinterpret_cast<uintptr_t>(info.dli_saddr), sym->st_size, name, kind);
      }
    }
  };
  for (const char* name : kExceptionAllocators) add_runtime(name, kException);
  for (const char* name : kMessageConstructors) add_runtime(name, kMessage);
  std::sort(ranges, ranges + num_ranges,
            [](const Range& a, const Range& b) { return a.start < b.start; });
  size_t mcx = 0;
  for (size_t i = 0; i < num_ranges; ++i) mcx += ranges[i].kind == kMcx;
  if (mcx == 0) {
    Write("no_system_alloc: no mcx function in the symbol tables (stripped?)\n");
    return false;
  }
  // The unwinder's first walk sets itself up: before arming.
  Trace t;
  _Unwind_Backtrace(&Collect, &t);
  prepared = true;
  return true;
}

void Arm() {
  if (!prepared) return;
  const char* memcheck = std::getenv("MCX_UNDER_MEMCHECK");
  if (memcheck != nullptr && *memcheck != '\0') return;
  armed.store(true);
}

void Disarm() { armed.store(false); }
bool Armed() { return armed.load(); }
uint64_t AllowedCalls() { return allowed_calls.load(); }
uint64_t ExceptionCalls() { return exception_calls.load(); }
uint64_t MessageCalls() { return message_calls.load(); }

}  // namespace no_system_alloc

// --- The replacements -------------------------------------------------------------

#if NO_SYSTEM_ALLOC_REPLACES

using no_system_alloc::Screen;

extern "C" {
void* __libc_malloc(size_t n) noexcept;
void* __libc_calloc(size_t n, size_t size) noexcept;
void* __libc_realloc(void* p, size_t n) noexcept;
void* __libc_memalign(size_t alignment, size_t n) noexcept;
void* __libc_valloc(size_t n) noexcept;
void* __libc_pvalloc(size_t n) noexcept;
void __libc_free(void* p) noexcept;

void* malloc(size_t n) noexcept {
  if (Screen("malloc", n) == no_system_alloc::kNull) return nullptr;
  return __libc_malloc(n);
}
void* calloc(size_t n, size_t size) noexcept {
  Screen("calloc", n * size);
  return __libc_calloc(n, size);
}
void* realloc(void* p, size_t n) noexcept {
  Screen("realloc", n);
  return __libc_realloc(p, n);
}
void free(void* p) noexcept {
  if (p != nullptr) Screen("free", 0);
  __libc_free(p);
}
void* memalign(size_t alignment, size_t n) noexcept {
  Screen("memalign", n);
  return __libc_memalign(alignment, n);
}
void* aligned_alloc(size_t alignment, size_t n) noexcept {
  Screen("aligned_alloc", n);
  return __libc_memalign(alignment, n);
}
int posix_memalign(void** out, size_t alignment, size_t n) noexcept {
  Screen("posix_memalign", n);
  if (alignment < sizeof(void*) || (alignment & (alignment - 1)) != 0) return EINVAL;
  void* p = __libc_memalign(alignment, n);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
void* valloc(size_t n) noexcept {
  Screen("valloc", n);
  return __libc_valloc(n);
}
void* pvalloc(size_t n) noexcept {
  Screen("pvalloc", n);
  return __libc_pvalloc(n);
}
}  // extern "C"

// In the harness's namespace, so that their frames are passed over when an
// optimizer leaves them out of line: a frame of another namespace would
// decide every operator new (as the test's own).
namespace no_system_alloc {
namespace {

void* New(size_t n, const char* fn) {
  Screen(fn, n);
  void* p = __libc_malloc(n != 0 ? n : 1);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void* AlignedNew(size_t n, std::align_val_t al, const char* fn) {
  Screen(fn, n);
  void* p = __libc_memalign(static_cast<size_t>(al), n != 0 ? n : 1);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void Delete(void* p) {
  if (p != nullptr) Screen("operator delete", 0);
  __libc_free(p);
}

}  // namespace
}  // namespace no_system_alloc

using no_system_alloc::AlignedNew;
using no_system_alloc::Delete;
using no_system_alloc::New;

void* operator new(size_t n) { return New(n, "operator new"); }
void* operator new[](size_t n) { return New(n, "operator new[]"); }
void* operator new(size_t n, const std::nothrow_t&) noexcept {
  Screen("operator new", n);
  return __libc_malloc(n != 0 ? n : 1);
}
void* operator new[](size_t n, const std::nothrow_t&) noexcept {
  Screen("operator new[]", n);
  return __libc_malloc(n != 0 ? n : 1);
}
void* operator new(size_t n, std::align_val_t al) { return AlignedNew(n, al, "operator new"); }
void* operator new[](size_t n, std::align_val_t al) { return AlignedNew(n, al, "operator new[]"); }
void* operator new(size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  Screen("operator new", n);
  return __libc_memalign(static_cast<size_t>(al), n != 0 ? n : 1);
}
void* operator new[](size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  Screen("operator new[]", n);
  return __libc_memalign(static_cast<size_t>(al), n != 0 ? n : 1);
}
void operator delete(void* p) noexcept { Delete(p); }
void operator delete[](void* p) noexcept { Delete(p); }
void operator delete(void* p, size_t) noexcept { Delete(p); }
void operator delete[](void* p, size_t) noexcept { Delete(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { Delete(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { Delete(p); }
void operator delete(void* p, std::align_val_t) noexcept { Delete(p); }
void operator delete[](void* p, std::align_val_t) noexcept { Delete(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { Delete(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { Delete(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { Delete(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { Delete(p); }

#endif  // NO_SYSTEM_ALLOC_REPLACES
