// The demo (examples/demo.cc) with every block from a static 4 MiB buddy
// region and the system allocator poisoned for mcx (no_system_alloc.h): an
// allocation made on behalf of mcx aborts, naming its frames. The demo's
// own containers and printf keep the C++ heap; its stats reports are
// std::strings by contract. The demo checks its own results; this program
// also checks that the region served every block and got each one back.

#include <cstdio>

#include "mcx/buddy/buddy_source.h"
#include "mcx/context/block_source.h"
#include "tests/buddy/no_system_alloc.h"

int demo_program_main();  // examples/demo.cc, main renamed

// 4 MiB: one block of 4 MiB, split as the demo's contexts ask.
MCX_BUDDY_SOURCE_DEFINE(demo_region, 256, 4 << 20, 1);

int main() {
  if (!mcx::SetDefaultBlockSource(&demo_region)) {
    std::fprintf(stderr, "demo_on_buddy_test: the default source was already chosen\n");
    return 1;
  }
  const bool poisoned = no_system_alloc::Prepare();
  no_system_alloc::Arm();
  const bool armed = no_system_alloc::Armed();
  const int status = demo_program_main();
  no_system_alloc::Disarm();
  const mcx::BuddyBlockSource::Stats s = demo_region.GetStats();
  std::printf("\nregion: %llu acquires, %llu releases, peak %zu of %zu bytes; system allocator: "
              "%s\n",
              static_cast<unsigned long long>(s.acquires),
              static_cast<unsigned long long>(s.releases), s.peak_used_bytes, s.region_bytes,
              armed ? "poisoned for mcx" : (poisoned ? "not poisoned (memcheck)" : "not poisoned"));
  if (status != 0) return status;
  if (s.acquires == 0 || s.used_bytes != 0 || s.free_blocks != 1) {
    std::fprintf(stderr, "demo_on_buddy_test: the region did not serve the demo, or lost blocks\n");
    return 1;
  }
  std::printf("demo_on_buddy_test: the demo ran in the region\n");
  return 0;
}
