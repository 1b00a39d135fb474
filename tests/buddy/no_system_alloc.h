// A program in which mcx must not reach the system allocator: this harness
// replaces malloc, calloc, realloc, free, the aligned forms and every form
// of operator new and delete, and once armed, aborts any call whose nearest
// caller of consequence is mcx code.
//
// Attribution. The harness walks the stack of each allocation call (libgcc's
// unwinder, no allocation) and looks each return address up in the symbol
// tables of the program's own objects, read once at Prepare() (mmap, no
// allocation). Frames of the C and C++ runtimes, of std::, __gnu_cxx:: and
// absl:: code and of the harness are passed over; the first frame left
// decides:
//   - mcx code (namespace mcx, mcx_* C functions; not mcx::testing or
//     mcx::test): abort, naming the frames. Except under the calls whose
//     contract is a result on the C++ heap: StatsReport, DotReport and
//     LiveChunksReport (a std::string), SummarizeLiveChunks and the
//     collecting InspectContext, and their results' own members (DumpStats
//     is the report that allocates nothing; InspectContext with a visitor
//     allocates nothing). A callable cleanup's Run (context/context.h)
//     counts as the program's: its body is the program's callable.
//   - __cxa_allocate_exception (a throw, from mcx's throwing calls or the
//     test's): malloc returns nullptr, so libstdc++ takes the exception from
//     its emergency pool, as a program without malloc would get it.
//   - the constructors of std::logic_error and std::runtime_error, on which
//     every standard exception with a message is built (std::invalid_argument,
//     std::logic_error: mcx's throwing calls' misuse and bad arguments):
//     libstdc++ copies the message with operator new, which is allowed as
//     part of the exception and counted (MessageCalls). Without a heap at
//     all, that copy would fail and the throw would become std::bad_alloc.
//   - anything else (GoogleTest, the test's own containers, the conformance
//     suite's counting source): allowed; the C++ heap is the test's.
// So "nothing reaches it" means: no allocation made on behalf of mcx but
// the message of an exception it throws.
//
// Where it is off: AddressSanitizer and ThreadSanitizer own malloc (the
// replacements are not compiled; Active() is false), and under Valgrind's
// memcheck (MCX_UNDER_MEMCHECK) Arm() does nothing, since walking the stack
// of every allocation there takes minutes. The tests still run everything
// over the buddy region and check that.

#ifndef MCX_TESTS_BUDDY_NO_SYSTEM_ALLOC_H_
#define MCX_TESTS_BUDDY_NO_SYSTEM_ALLOC_H_

#include <cstdint>

namespace no_system_alloc {

// Whether this build replaces the allocator (not under ASan or TSan).
bool Active();
// Reads the symbol tables; call once before Arm, from main. False (with a
// line on stderr) if attribution cannot work, or the build is not Active.
bool Prepare();
// From now on, an allocation made on behalf of mcx aborts. No-op unless
// Prepare succeeded, and under memcheck.
void Arm();
void Disarm();
bool Armed();

// While armed: allocation calls attributed to the test (allowed),
// exception objects sent to libstdc++'s emergency pool, and copies of
// exceptions' messages (allowed).
uint64_t AllowedCalls();
uint64_t ExceptionCalls();
uint64_t MessageCalls();

}  // namespace no_system_alloc

#endif  // MCX_TESTS_BUDDY_NO_SYSTEM_ALLOC_H_
