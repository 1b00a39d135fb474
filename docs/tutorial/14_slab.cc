// Tutorial, part 13: the slab kind. Objects of one size with no header,
// the fullest block first, blocks that go back when empty, the kernel's
// object constructor, and the typed front end, mcx::Slab<T>.
//
// With --dot DIR it also writes the slab after a churn as Graphviz
// (docs/pictures/render.sh draws it).

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "docs/tutorial/check.h"
#include "mcx/context/context.h"
#include "mcx/context/dot.h"
#include "mcx/context/stats.h"
#include "mcx/pool/pool.h"
#include "mcx/slab/slab.h"
#include "mcx/slab/typed_slab.h"

namespace {

// Checking builds put a header word and a sentinel around each object, and
// direct builds give each object a block of its own: the checks on exact
// layout are skipped there.
constexpr bool kExactLayout = !TUTORIAL_CHECKING_BUILD && !MCX_DIRECT;

// Blocks of exactly the size asked for, for a picture that is the same on
// every run (the system allocator reports its own slack).
class ExactSource : public mcx::BlockSource {
 public:
  mcx::Block Acquire(size_t min_size, size_t alignment) override {
    void* p = std::aligned_alloc(alignment, (min_size + alignment - 1) & ~(alignment - 1));
    return p != nullptr ? mcx::Block{p, min_size} : mcx::Block{};
  }
  void Release(mcx::Block block) override { std::free(block.ptr); }
};

// [START tuple]
struct Tuple {
  int64_t id;
  double score;
  char name[24];
};  // 40 bytes
// [END tuple]

// [START kmem]
// The kernel's object constructor: it runs once, when a slot is first used,
// and a freed object keeps the state it left (here: a lock, ready to take).
struct Lock {
  bool initialised;
  int holders;
};
void InitLock(void* object, void* constructed) noexcept {
  auto* l = static_cast<Lock*>(object);
  l->initialised = true;
  l->holders = 0;
  ++*static_cast<int*>(constructed);
}
// [END kmem]

// [START node]
struct Node {
  Node* left;
  Node* right;
  std::string key;  // a destructor to run
};
// [END node]

}  // namespace

int main(int argc, char** argv) {
  const char* dot_dir = argc == 3 && std::strcmp(argv[1], "--dot") == 0 ? argv[2] : nullptr;

  // [START objects]
  mcx::SlabOptions options;
  options.object_size = sizeof(Tuple);
  mcx::Context* tuples = mcx::CreateSlabContext(nullptr, "tuples", options);
  auto* a = static_cast<Tuple*>(tuples->Alloc(sizeof(Tuple)));
  auto* b = static_cast<Tuple*>(tuples->Alloc(sizeof(Tuple)));
  const mcx::SlabGeometry g = mcx::GetSlabGeometry(tuples);
  if (kExactLayout) CHECK(reinterpret_cast<char*>(b) - reinterpret_cast<char*>(a) == 48);
  CHECK(tuples->ChunkSize(a) == sizeof(Tuple));  // no header: 40 bytes, 48 apart (alignment)
  tuples->Free(a);               // O(1): the block is the address, masked
  void* c = tuples->Alloc(sizeof(Tuple));
  if (kExactLayout) CHECK(c == a);  // the slot freed last
  // Any other size is refused, as PostgreSQL's slab.c raises an ERROR:
  CHECK(tuples->TryAlloc(2 * sizeof(Tuple)) == nullptr);
  CHECK(tuples->last_failure() == mcx::Failure::kUnsupported);
  bool threw = false;
  try {
    tuples->Alloc(100);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  // [END objects]

  // [START policy]
  // Blocks of objects come and go with their objects: the fullest block with
  // room serves the next one, and a block whose last object is freed goes
  // back to the block source (one empty block is kept for reuse).
  std::vector<void*> live;
  for (size_t i = 0; i < 3 * g.objects_per_block; ++i) live.push_back(tuples->Alloc(sizeof(Tuple)));
  const size_t blocks = tuples->num_blocks();
  for (void* p : live) tuples->Free(p);
  CHECK(tuples->num_blocks() < blocks);
  tuples->Destroy();
  // [END policy]

  // [START kmem_use]
  int constructed = 0;
  mcx::SlabOptions lock_options;
  lock_options.object_size = sizeof(Lock);
  lock_options.constructor = &InitLock;
  lock_options.arg = &constructed;
  mcx::Context* locks = mcx::CreateSlabContext(nullptr, "locks", lock_options);
  auto* l = static_cast<Lock*>(mcx::SlabAllocObject(locks));
  CHECK(l->initialised && constructed == 1);
  l->holders = 0;                // give it back in its constructed state
  locks->Free(l);
  auto* again = static_cast<Lock*>(mcx::SlabAllocObject(locks));
  CHECK(again->initialised);     // constructed once, not at each allocation
  if (kExactLayout) CHECK(constructed == 1);
  locks->Destroy();
  // [END kmem_use]

  // [START typed]
  mcx::Context* query = mcx::Context::Create(nullptr, "query", mcx::PoolKind());
  mcx::Slab<Node> nodes = mcx::Slab<Node>::Create(query, "nodes");
  Node* root = nodes.New(Node{nullptr, nullptr, "root"});
  root->left = nodes.New(Node{nullptr, nullptr, "left"});
  root->right = nodes.New(Node{nullptr, nullptr, "right"});
  nodes.Delete(root->left);      // ~Node, then the slot is free
  root->left = nullptr;
  query->Destroy();              // the slab goes with its parent: ~Node for the others
  // [END typed]

  if (dot_dir != nullptr) {
    // A small slab after a churn: full blocks, a partly free one, an empty
    // one kept for reuse.
    static ExactSource source;
    mcx::ContextOptions co;
    co.block_source = &source;
    mcx::SlabOptions small;
    small.object_size = 48;
    small.block_size = 1024;
    mcx::Context* slab = mcx::CreateSlabContext(nullptr, "nodes (slab)", small, co);
    const size_t n = mcx::GetSlabGeometry(slab).objects_per_block;
    std::vector<void*> objs;
    for (size_t i = 0; i < 4 * n; ++i) objs.push_back(slab->Alloc(48));
    for (size_t i = 0; i < n; ++i) slab->Free(objs[3 * n + i]);  // the last block empties
    for (size_t i = n; i < 2 * n; i += 3) slab->Free(objs[i]);    // holes in the second
    mcx::DotOptions o;
    o.blocks = true;
    std::ofstream(std::string(dot_dir) + "/slab-blocks.dot") << mcx::DotReport(slab, o);
    slab->Destroy();
  }
  return 0;
}
