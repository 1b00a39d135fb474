// Every place mcx runs user code, left by longjmp (a C engine's error path)
// and by throwing, on the pool, rewinding pool and freelist kinds. After
// each exit the program carries on: it scribbles over the stack where the
// abandoned frames were, creates, resets and destroys unrelated contexts,
// finishes the abandoned teardown (Destroy or Reset of the context, an
// ancestor, or the context whose cleanup left), and then checks that
//   - each cleanup ran exactly once, in the order context.h documents (a
//     small model of the teardown order predicts every log),
//   - the first exception of a throwing teardown propagated after it was
//     over, and throwing callables' captures were destroyed,
//   - Check() passes and the counting source holds no block at the end,
//   - no misuse was reported (a recording misuse handler is installed for
//     every test) and, for checking builds, no concurrency guard is left
//     held: the context is handed to another thread, which uses and
//     destroys it,
//   - failure handlers that leave a failing call allocate nothing on the
//     heap on the way (this binary replaces operator new to count), leave
//     the context unchanged and usable.
//
// The sites:
//   TeardownExitTest  cleanups in both phases at the root, a middle context,
//                     leaves among siblings; failure handlers called from
//                     cleanups (an allocation over a limit elsewhere, a
//                     child created over a limit in the tree, bad sizes and
//                     alignments); reparenting into a limited tree (accepted
//                     and refused) inside a cleanup; nested teardowns (a
//                     cleanup destroying a child, then leaving; a child's
//                     teardown leaving through its parent's).
//   FailureExitTest   a failure handler for each failure kind (out of
//                     memory, limit, bad size, bad alignment, unsupported,
//                     bad argument) and each throwing entry point that can
//                     fail that way.
//   ConstructorExitTest  New<T> constructors (and a callable cleanup's move
//                     constructor) that leave.
//
// A callable cleanup that leaves by longjmp does not have its captures
// destroyed (nothing runs destructors across a longjmp): the longjmp tests
// capture only trivially destructible values.

#include <atomic>
#include <csetjmp>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/new.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

// --- Heap allocation counting ---------------------------------------------------
//
// Operator new and delete are replaced for the whole binary; while counting
// is on, calls are counted. A failure path that allocates before the handler
// runs leaks when the handler longjmps.

namespace {

std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_news{0};
std::atomic<int64_t> g_deletes{0};

void* CountedNew(size_t n) {
  if (g_counting.load(std::memory_order_relaxed)) g_news.fetch_add(1, std::memory_order_relaxed);
  void* p = std::malloc(n != 0 ? n : 1);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void* CountedAlignedNew(size_t n, std::align_val_t al) {
  if (g_counting.load(std::memory_order_relaxed)) g_news.fetch_add(1, std::memory_order_relaxed);
  size_t alignment = static_cast<size_t>(al);
  if (alignment < sizeof(void*)) alignment = sizeof(void*);
  void* p = nullptr;
  if (posix_memalign(&p, alignment, n != 0 ? n : 1) != 0) throw std::bad_alloc();
  return p;
}

void CountedDelete(void* p) {
  if (p != nullptr && g_counting.load(std::memory_order_relaxed)) {
    g_deletes.fetch_add(1, std::memory_order_relaxed);
  }
  std::free(p);
}

}  // namespace

void* operator new(size_t n) { return CountedNew(n); }
void* operator new[](size_t n) { return CountedNew(n); }
void* operator new(size_t n, const std::nothrow_t&) noexcept {
  try {
    return CountedNew(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](size_t n, const std::nothrow_t&) noexcept {
  try {
    return CountedNew(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new(size_t n, std::align_val_t al) { return CountedAlignedNew(n, al); }
void* operator new[](size_t n, std::align_val_t al) { return CountedAlignedNew(n, al); }
void* operator new(size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  try {
    return CountedAlignedNew(n, al);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  try {
    return CountedAlignedNew(n, al);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { CountedDelete(p); }
void operator delete[](void* p) noexcept { CountedDelete(p); }
void operator delete(void* p, size_t) noexcept { CountedDelete(p); }
void operator delete[](void* p, size_t) noexcept { CountedDelete(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { CountedDelete(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { CountedDelete(p); }
void operator delete(void* p, std::align_val_t) noexcept { CountedDelete(p); }
void operator delete[](void* p, std::align_val_t) noexcept { CountedDelete(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { CountedDelete(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { CountedDelete(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  CountedDelete(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  CountedDelete(p);
}

namespace mcx {
namespace {

using test::CountingBlockSource;
using test::FailingBlockSource;

struct HeapCount {
  int64_t news;
  int64_t deletes;
};

void StartCountingHeap() {
  g_news.store(0);
  g_deletes.store(0);
  g_counting.store(true);
}

HeapCount StopCountingHeap() {
  g_counting.store(false);
  return {g_news.load(), g_deletes.load()};
}

// --- Exits ----------------------------------------------------------------------

enum class Exit { kLongjmp, kThrow };
enum class KindId { kPool, kRewindPool, kFreelist };

const char* ExitName(Exit e) { return e == Exit::kLongjmp ? "longjmp" : "throw"; }
const char* KindName(KindId k) {
  return k == KindId::kPool ? "pool" : k == KindId::kRewindPool ? "rewind_pool" : "freelist";
}

// What the throwing exits throw: no std::exception (whose message would be
// on the heap), so the counting above sees only mcx's allocations.
struct ExitError {
  int id;  // the cleanup that left, or -1 for a handler outside cleanups
};

std::jmp_buf g_jump;
Exit g_exit = Exit::kLongjmp;
int g_current_cleanup = -1;  // set by a model cleanup while it runs

[[noreturn]] void Leave() {
  if (g_exit == Exit::kLongjmp) std::longjmp(g_jump, 1);
  throw ExitError{g_current_cleanup};
}

// The failure handler: counts, remembers, leaves.
int g_handler_calls = 0;
Failure g_handler_failure = Failure::kNone;
Context* g_handler_context = nullptr;

void LeavingHandler(const FailureInfo& info) {
  ++g_handler_calls;
  g_handler_failure = info.failure;
  g_handler_context = info.context;
  Leave();
}

// What an engine's error path does after the longjmp: it writes over the
// stack where the abandoned frames were.
ABSL_ATTRIBUTE_NOINLINE void ScribbleStack() {
  volatile char line[16384];
  for (size_t i = 0; i < sizeof(line); ++i) line[i] = static_cast<char>(0x5A);
}

KindSpec Kind(KindId k, size_t initial_block_size = 0) {
  if (k == KindId::kFreelist) {
    FreelistOptions o;
    if (initial_block_size != 0) o.initial_block_size = initial_block_size;
    return FreelistKind(o);
  }
  PoolOptions o;
  o.rewind_on_free = k == KindId::kRewindPool;
  if (initial_block_size != 0) o.initial_block_size = initial_block_size;
  return PoolKind(o);
}

void ExpectCheck(Context* ctx) {
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << ctx->name() << ": " << error;
}

// Unrelated contexts on the same thread after an exit: created, used,
// reset and destroyed normally, their cleanups once each.
int g_other_ran = 0;
void ExerciseOtherContexts(BlockSource* source, KindId k) {
  ContextOptions o;
  o.block_source = source;
  g_other_ran = 0;
  Context* x = Context::Create(nullptr, "other", Kind(k), o);
  Context* y = x->CreateChild("other-child", Kind(k));
  y->AddCleanup([] { ++g_other_ran; });
  x->AddCleanup([](void*) { ++g_other_ran; }, nullptr, CleanupPhase::kBeforeChildren);
  EXPECT_NE(x->Alloc(100), nullptr);
  EXPECT_NE(y->Alloc(30000), nullptr);
  x->Reset();
  EXPECT_EQ(g_other_ran, 2);
  EXPECT_EQ(x->first_child(), nullptr);
  ExpectCheck(x);
  x->AddCleanup([] { ++g_other_ran; });
  x->Destroy();
  EXPECT_EQ(g_other_ran, 3);
}

// Another thread takes the context over (after a proper hand-off: join
// order), uses it, and destroys it. In checking builds a concurrency guard
// left held by an exit is reported here.
void HandOffAndDestroy(Context* ctx, KindId k) {
  std::thread t([ctx, k] {
    EXPECT_NE(ctx->Alloc(64), nullptr);
    Context* c = ctx->CreateChild("on-another-thread", Kind(k));
    EXPECT_NE(c->Alloc(5000), nullptr);
    c->Destroy();
    ctx->Reset();
    ctx->Destroy();
  });
  t.join();
}

// Every test installs a misuse handler that records: no report is expected.
std::vector<std::string>* g_reports = nullptr;
void RecordMisuse(const char* message) {
  if (g_reports != nullptr) g_reports->push_back(message);
}

class ExitTest : public ::testing::TestWithParam<std::tuple<Exit, KindId>> {
 protected:
  void SetUp() override {
    g_reports = &reports_;
    previous_ = SetMisuseHandler(&RecordMisuse);
    g_exit = exit();
  }
  void TearDown() override {
    SetMisuseHandler(previous_);
    g_reports = nullptr;
    EXPECT_TRUE(reports_.empty()) << reports_.size() << " misuse reports, the first: "
                                  << reports_.front();
  }
  Exit exit() const { return std::get<0>(GetParam()); }
  KindId kind() const { return std::get<1>(GetParam()); }

  std::vector<std::string> reports_;
  MisuseHandler previous_ = nullptr;
};

std::string ParamName(const ::testing::TestParamInfo<std::tuple<Exit, KindId>>& info) {
  return std::string(ExitName(std::get<0>(info.param))) + "_" + KindName(std::get<1>(info.param));
}

// --- Teardown exits: the model ----------------------------------------------------
//
// A tree of named contexts with cleanups whose actions are data, so that a
// model can predict the log. The model tears down as context.h says:
// kBeforeChildren cleanups newest first, the children newest first each
// completely, kAfterChildren cleanups newest first; a cleanup is removed
// before it runs. A longjmp stops everything (ModelJump); a throw ends the
// cleanup and the teardown goes on; the first exception in time is the one
// that propagates.

enum class Act {
  kExit,           // the cleanup itself longjmps or throws
  kFailElsewhere,  // a failing call on another root ("engine"); its handler leaves
  kFailCreate,     // creates a child of `target` over its limit; the handler leaves
  kDestroy,        // destroys `target` (a nested teardown)
  kMove,           // SetParent(stray under `target`): accepted
  kMoveRefused,    // SetParent(big stray under `target`): refused by the limit
};

struct Action {
  Act act;
  int target = -1;
  int arg = 0;  // kFailElsewhere: 0 limit, 1 bad alignment, 2 bad size
};

struct CleanupSpec {
  int id;
  std::string label;
  int owner;
  CleanupPhase phase;
  std::vector<Action> actions;
};

struct NodeModel {
  std::string name;
  int parent = -1;
  std::vector<int> children;  // oldest first
  std::vector<int> before;    // cleanup ids, oldest first
  std::vector<int> after;
  bool live = true;
};

struct ModelJump {};

class TeardownModel {
 public:
  std::vector<NodeModel> nodes;
  std::vector<CleanupSpec>* cleanups = nullptr;
  Exit exit = Exit::kLongjmp;
  std::vector<int> log;
  int first_error = -2;  // -2: none

  void Link(int n, int parent) {
    nodes[n].parent = parent;
    if (parent >= 0) nodes[parent].children.push_back(n);
  }
  void Unlink(int n) {
    int p = nodes[n].parent;
    if (p < 0) return;
    auto& v = nodes[p].children;
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i] == n) {
        v.erase(v.begin() + static_cast<long>(i));
        break;
      }
    }
    nodes[n].parent = -1;
  }

  // Returns true if an exception left this teardown (throw mode).
  bool Teardown(int n, bool destroy) {
    bool threw = false;
    while (!nodes[n].before.empty()) {
      int id = nodes[n].before.back();
      nodes[n].before.pop_back();
      threw |= Run(id);
    }
    while (!nodes[n].children.empty()) threw |= Teardown(nodes[n].children.back(), true);
    while (!nodes[n].after.empty()) {
      int id = nodes[n].after.back();
      nodes[n].after.pop_back();
      threw |= Run(id);
    }
    if (destroy) {
      Unlink(n);
      nodes[n].live = false;
    }
    return threw;
  }

  bool DestroyChildren(int n) {
    bool threw = false;
    while (!nodes[n].children.empty()) threw |= Teardown(nodes[n].children.back(), true);
    return threw;
  }

 private:
  bool Throw(int id) {
    if (exit == Exit::kLongjmp) throw ModelJump{};
    if (first_error == -2) first_error = id;
    return true;
  }

  // Runs cleanup `id`; true if it threw.
  bool Run(int id) {
    log.push_back(id);
    for (const Action& a : (*cleanups)[static_cast<size_t>(id)].actions) {
      switch (a.act) {
        case Act::kExit:
        case Act::kFailElsewhere:
        case Act::kFailCreate:
          return Throw(id);
        case Act::kDestroy:
          if (Teardown(a.target, true)) return true;  // the nested Destroy rethrows
          break;
        case Act::kMove:
          Unlink(a.arg);
          Link(a.arg, a.target);
          break;
        case Act::kMoveRefused:
          break;
      }
    }
    return false;
  }
};

// The tree every teardown scenario starts from, and its contexts.
enum NodeId {
  kTop,      // root of the tree; has the failure handler
  kRoot,     // the context the teardown starts at
  kMid,      //   older child of root
  kLeafA,    //     oldest child of mid (torn down last of the three); limited
  kLeafB,    //     middle sibling
  kLeafC,    //     newest sibling (torn down first)
  kMid2,     //   newer child of root (torn down before mid)
  kLeaf2,    //     its child
  kStray,    // a root with a cleanup, small enough to move under leafA
  kBigStray, // a root too big to move under leafA
  kEngine,   // a root with a limit and the handler, for failures elsewhere
  kNodes,
};

const char* const kNodeNames[kNodes] = {"top",   "root", "mid",   "leafA",    "leafB",  "leafC",
                                        "mid2",  "leaf2", "stray", "bigstray", "engine"};
const int kNodeParents[kNodes] = {-1, kTop, kRoot, kMid, kMid, kMid, kRoot, kMid2, -1, -1, -1};
constexpr size_t kLeafALimit = 256 * 1024;

struct Insert {
  int owner;
  CleanupPhase phase;
  std::vector<Action> actions;
};

struct Site {
  const char* name;
  std::vector<Insert> inserts;  // cleanups added in the middle of their list
};

Action A(Act act, int target = -1, int arg = 0) { return Action{act, target, arg}; }

std::vector<Site> Sites() {
  constexpr auto kB = CleanupPhase::kBeforeChildren;
  constexpr auto kA = CleanupPhase::kAfterChildren;
  std::vector<Site> s;
  for (int node : {kRoot, kMid, kLeafA, kLeafB, kLeafC, kLeaf2}) {
    s.push_back({"cleanup leaves", {{node, kB, {A(Act::kExit)}}}});
    s.push_back({"cleanup leaves", {{node, kA, {A(Act::kExit)}}}});
  }
  s.push_back({"handler leaves a limit failure elsewhere", {{kLeafB, kA, {A(Act::kFailElsewhere, -1, 0)}}}});
  s.push_back({"handler leaves a bad alignment elsewhere", {{kMid, kB, {A(Act::kFailElsewhere, -1, 1)}}}});
  s.push_back({"handler leaves a bad size elsewhere", {{kRoot, kA, {A(Act::kFailElsewhere, -1, 2)}}}});
  s.push_back({"handler leaves a child creation over a limit (B1)",
               {{kMid2, kA, {A(Act::kFailCreate, kLeafA)}}}});
  s.push_back({"reparent into the limited tree, then leave",
               {{kMid2, kB, {A(Act::kMove, kLeafA, kStray), A(Act::kExit)}}}});
  s.push_back({"reparent refused by the limit, then leave",
               {{kLeaf2, kA, {A(Act::kMoveRefused, kLeafA, kBigStray), A(Act::kExit)}}}});
  s.push_back({"destroy a child, then leave", {{kRoot, kB, {A(Act::kDestroy, kMid2), A(Act::kExit)}}}});
  s.push_back({"destroy a not yet reached subtree, then leave",
               {{kLeaf2, kA, {A(Act::kDestroy, kMid), A(Act::kExit)}}}});
  s.push_back({"a nested teardown leaves through its parent's",
               {{kRoot, kB, {A(Act::kDestroy, kMid)}}, {kLeafB, kA, {A(Act::kExit)}}}});
  s.push_back({"two cleanups leave", {{kLeafC, kA, {A(Act::kExit)}}, {kMid2, kB, {A(Act::kExit)}}}});
  return s;
}

enum class Start { kDestroyRoot, kResetRoot, kDestroyChildrenOfTop };
enum class Finish {
  kDestroyRoot,
  kResetRoot,
  kResetRootReleaseAll,
  kDestroyTop,      // an ancestor
  kResetTop,        // an ancestor, reset
  kResetOwnerThenDestroyRoot,  // the context whose cleanup left, then the root
};
const char* const kStartNames[] = {"root->Destroy()", "root->Reset()", "top->DestroyChildren()"};
const char* const kFinishNames[] = {"root->Destroy()", "root->Reset()",
                                    "root->Reset(ReleaseAll)", "top->Destroy()",
                                    "top->Reset()", "owner->Reset(), root->Destroy()"};

// The scenario being run: what the real cleanups reach through their id.
struct Scenario {
  std::vector<CleanupSpec> cleanups;
  Context* ctx[kNodes] = {};
  std::vector<int> log;
  std::shared_ptr<int> token = std::make_shared<int>(0);  // captured in throw mode
  KindId kind = KindId::kPool;
  int leaving_owner = -1;  // the innermost owner of a cleanup that left
};
Scenario* g_scenario = nullptr;

void FailElsewhere(int how) {
  Context* engine = g_scenario->ctx[kEngine];
  switch (how) {
    case 0:
      engine->Alloc(1 << 20);
      break;
    case 1:
      engine->AllocAligned(16, 3);
      break;
    default:
      engine->AllocZeroArray(~size_t{0} / 2, 4);
      break;
  }
  ADD_FAILURE() << "the failing call returned";
}

void RunCleanupSpec(void* arg) {
  const CleanupSpec& spec = *static_cast<const CleanupSpec*>(arg);
  g_scenario->log.push_back(spec.id);
  for (const Action& a : spec.actions) {
    g_current_cleanup = spec.id;
    switch (a.act) {
      case Act::kExit:
        g_scenario->leaving_owner = spec.owner;
        Leave();
      case Act::kFailElsewhere:
        g_scenario->leaving_owner = spec.owner;
        FailElsewhere(a.arg);
        return;
      case Act::kFailCreate:
        g_scenario->leaving_owner = spec.owner;
        g_scenario->ctx[a.target]->CreateChild("over-the-limit", Kind(g_scenario->kind, 1 << 20));
        ADD_FAILURE() << "creating a child over the limit returned";
        return;
      case Act::kDestroy:
        g_scenario->ctx[a.target]->Destroy();
        break;
      case Act::kMove:
        EXPECT_TRUE(g_scenario->ctx[a.arg]->SetParent(g_scenario->ctx[a.target]).ok());
        break;
      case Act::kMoveRefused: {
        absl::Status s = g_scenario->ctx[a.arg]->SetParent(g_scenario->ctx[a.target]);
        EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
        EXPECT_EQ(g_scenario->ctx[a.arg]->parent(), nullptr);
        break;
      }
    }
  }
}

// Builds the real tree and the model for `site`. Every context of the tree
// gets two cleanups per phase; a site's cleanup goes between them.
void Build(const Site& site, Exit exit, KindId k, BlockSource* source, Scenario* sc,
           TeardownModel* model) {
  sc->kind = k;
  model->exit = exit;
  model->cleanups = &sc->cleanups;
  model->nodes.resize(kNodes);
  for (int n = 0; n < kNodes; ++n) {
    model->nodes[n].name = kNodeNames[n];
    ContextOptions o;
    if (kNodeParents[n] < 0) o.block_source = source;
    if (n == kLeafA) o.limit = kLeafALimit;
    if (n == kEngine) o.limit = 64 * 1024;
    Context* parent = kNodeParents[n] >= 0 ? sc->ctx[kNodeParents[n]] : nullptr;
    sc->ctx[n] = Context::Create(parent, kNodeNames[n], Kind(k), o);
    model->Link(n, kNodeParents[n]);
    EXPECT_NE(sc->ctx[n]->Alloc(100), nullptr);
    EXPECT_NE(sc->ctx[n]->Alloc(n == kBigStray ? 300000 : 20000), nullptr);
  }
  sc->ctx[kTop]->SetFailureHandler(&LeavingHandler);
  sc->ctx[kEngine]->SetFailureHandler(&LeavingHandler);
  // Cleanup specs first (their addresses must not move), then registration.
  std::vector<int> order;
  for (int n = 0; n < kNodes; ++n) {
    if (n == kTop || n == kEngine || n == kBigStray) continue;
    for (CleanupPhase phase : {CleanupPhase::kBeforeChildren, CleanupPhase::kAfterChildren}) {
      const char* p = phase == CleanupPhase::kBeforeChildren ? "before" : "after";
      auto add = [&](std::string label, int owner, std::vector<Action> actions) {
        int id = static_cast<int>(sc->cleanups.size());
        sc->cleanups.push_back({id, std::move(label), owner, phase, std::move(actions)});
        order.push_back(id);
      };
      add(std::string(kNodeNames[n]) + "." + p + ".1", n, {});
      for (const Insert& ins : site.inserts) {
        if (ins.owner == n && ins.phase == phase) {
          add(std::string(kNodeNames[n]) + "." + p + ".site", n, ins.actions);
        }
      }
      add(std::string(kNodeNames[n]) + "." + p + ".2", n, {});
    }
  }
  for (int id : order) {
    CleanupSpec* spec = &sc->cleanups[static_cast<size_t>(id)];
    Context* ctx = sc->ctx[spec->owner];
    if (exit == Exit::kThrow) {
      // Callables with a capture that must be destroyed, also when they throw.
      std::shared_ptr<int> token = sc->token;
      ctx->AddCleanup([spec, token] { RunCleanupSpec(spec); }, spec->phase);
    } else if (id % 2 == 0) {
      ctx->AddCleanup(&RunCleanupSpec, spec, spec->phase);
    } else {
      ctx->AddCleanup([spec] { RunCleanupSpec(spec); }, spec->phase);
    }
    NodeModel& m = model->nodes[static_cast<size_t>(spec->owner)];
    (spec->phase == CleanupPhase::kBeforeChildren ? m.before : m.after).push_back(id);
  }
}

std::string Labels(const std::vector<int>& ids, const Scenario& sc) {
  std::string s;
  for (int id : ids) s += (s.empty() ? "" : " ") + sc.cleanups[static_cast<size_t>(id)].label;
  return s;
}

void ExpectLog(const Scenario& sc, const TeardownModel& model, const char* when) {
  EXPECT_EQ(Labels(sc.log, sc), Labels(model.log, sc)) << when;
}

// Runs the start of the teardown a few calls deep, as an engine's query
// would; returns whether it threw, and the id of the exception's cleanup.
ABSL_ATTRIBUTE_NOINLINE void StartTeardown(Scenario* sc, Start start) {
  volatile char scratch[2048];
  scratch[0] = 0;
  switch (start) {
    case Start::kDestroyRoot:
      sc->ctx[kRoot]->Destroy();
      break;
    case Start::kResetRoot:
      sc->ctx[kRoot]->Reset();
      break;
    case Start::kDestroyChildrenOfTop:
      sc->ctx[kTop]->DestroyChildren();
      break;
  }
  (void)scratch[0];
}

bool ModelStart(TeardownModel* model, Start start) {
  switch (start) {
    case Start::kDestroyRoot:
      return model->Teardown(kRoot, true);
    case Start::kResetRoot:
      return model->Teardown(kRoot, false);
    case Start::kDestroyChildrenOfTop:
      break;
  }
  return model->DestroyChildren(kTop);
}

// The rest: the live contexts are checked, used, handed off and destroyed;
// the model predicts the cleanups of every destroy.
void FinishScenario(Scenario* sc, TeardownModel* model, CountingBlockSource* source) {
  std::vector<int> roots;
  for (int n = 0; n < kNodes; ++n) {
    if (!model->nodes[n].live) continue;
    ExpectCheck(sc->ctx[n]);
    if (model->nodes[n].parent < 0) roots.push_back(n);
  }
  // The root survives a reset: it is usable.
  if (model->nodes[kRoot].live) {
    Context* root = sc->ctx[kRoot];
    EXPECT_NE(root->Alloc(300), nullptr);
    Context* c = root->CreateChild("after", Kind(sc->kind));
    EXPECT_NE(c->Alloc(20000), nullptr);
    ExpectCheck(root);
  }
  // Hand the tree's top to another thread, which destroys it.
  model->Teardown(kTop, true);
  HandOffAndDestroy(sc->ctx[kTop], sc->kind);
  for (int n : roots) {
    if (n == kTop) continue;
    model->Teardown(n, true);
    sc->ctx[n]->Destroy();
  }
  ExpectLog(*sc, *model, "after every context was destroyed");
  EXPECT_EQ(source->live_blocks(), 0);
  EXPECT_EQ(source->bad_releases(), 0);
  EXPECT_EQ(sc->token.use_count(), 1) << "a callable's captures were not destroyed";
}

using TeardownExitTest = ExitTest;

// One finishing call, a few calls deep: 0 Destroy, 1 Reset, 2 Reset(ReleaseAll).
ABSL_ATTRIBUTE_NOINLINE void FinishingCall(Scenario* sc, int target, int op) {
  volatile char scratch[1024];
  scratch[0] = 0;
  Context* c = sc->ctx[target];
  if (op == 0) {
    c->Destroy();
  } else if (op == 1) {
    c->Reset();
  } else {
    c->Reset(ResetOptions::ReleaseAll());
  }
  (void)scratch[0];
}

// Finishes with `op` on `target`; when a further cleanup leaves that call
// too (a site with two), the same call is made again, as an engine would.
ABSL_ATTRIBUTE_NOINLINE void FinishWithRetries(Scenario* sc, TeardownModel* model, int target,
                                               int op) {
  for (int attempt = 0; attempt < 4; ++attempt) {
    volatile bool model_jumped = false;
    try {
      model->Teardown(target, op == 0);
    } catch (const ModelJump&) {
      model_jumped = true;
    }
    if (setjmp(g_jump) == 0) {
      FinishingCall(sc, target, op);
      EXPECT_FALSE(model_jumped) << "the finishing call did not jump where the model does";
      ExpectLog(*sc, *model, "after the finishing call");
      return;
    }
    ScribbleStack();
    EXPECT_TRUE(model_jumped) << "a cleanup left the finishing call unexpectedly";
    ExpectLog(*sc, *model, "when a cleanup left the finishing call");
    if (!model_jumped) return;
  }
  ADD_FAILURE() << "still jumping after 4 finishing calls";
}

// Longjmp: the teardown is abandoned where the cleanup left; finishing it
// in any of the documented ways runs the rest once, in order.
ABSL_ATTRIBUTE_NOINLINE void RunLongjmpScenario(const Site& site, KindId k, Start start,
                                                Finish finish) {
  CountingBlockSource source;
  Scenario sc;
  TeardownModel model;
  Build(site, Exit::kLongjmp, k, &source, &sc, &model);
  g_scenario = &sc;
  g_handler_calls = 0;
  bool jumped = false;
  try {
    ModelStart(&model, start);
  } catch (const ModelJump&) {
    jumped = true;
  }
  ASSERT_TRUE(jumped) << "the model did not reach the site";
  if (setjmp(g_jump) == 0) {
    StartTeardown(&sc, start);
    ADD_FAILURE() << "the teardown did not jump";
    return;
  }
  ScribbleStack();
  ExpectLog(sc, model, "when the cleanup left");
  const int owner = sc.leaving_owner;
  ExerciseOtherContexts(&source, k);
  // The engine's guard (a handler left one of its failing calls) is free.
  EXPECT_NE(sc.ctx[kEngine]->Alloc(10), nullptr);
  switch (finish) {
    case Finish::kDestroyRoot:
      FinishWithRetries(&sc, &model, kRoot, 0);
      break;
    case Finish::kResetRoot:
      FinishWithRetries(&sc, &model, kRoot, 1);
      break;
    case Finish::kResetRootReleaseAll:
      FinishWithRetries(&sc, &model, kRoot, 2);
      EXPECT_EQ(sc.ctx[kRoot]->num_blocks(), 1u);
      break;
    case Finish::kDestroyTop:
      FinishWithRetries(&sc, &model, kTop, 0);
      break;
    case Finish::kResetTop:
      FinishWithRetries(&sc, &model, kTop, 1);
      break;
    case Finish::kResetOwnerThenDestroyRoot:
      ASSERT_GE(owner, 0);
      ASSERT_TRUE(model.nodes[owner].live);
      FinishWithRetries(&sc, &model, owner, 1);
      ExpectCheck(sc.ctx[owner]);
      if (model.nodes[kRoot].live) FinishWithRetries(&sc, &model, kRoot, 0);
      break;
  }
  if (!model.nodes[kTop].live) {
    // The strays and the engine are the remaining roots.
    for (int n = 0; n < kNodes; ++n) {
      if (!model.nodes[n].live || model.nodes[n].parent >= 0) continue;
      ExpectCheck(sc.ctx[n]);
      model.Teardown(n, true);
      sc.ctx[n]->Destroy();
    }
    ExpectLog(sc, model, "after every context was destroyed");
    EXPECT_EQ(source.live_blocks(), 0);
  } else {
    FinishScenario(&sc, &model, &source);
  }
  g_scenario = nullptr;
}

// Throw: the teardown completes, then the first exception propagates.
ABSL_ATTRIBUTE_NOINLINE void RunThrowScenario(const Site& site, KindId k, Start start) {
  CountingBlockSource source;
  Scenario sc;
  TeardownModel model;
  Build(site, Exit::kThrow, k, &source, &sc, &model);
  g_scenario = &sc;
  EXPECT_TRUE(ModelStart(&model, start));
  try {
    StartTeardown(&sc, start);
    ADD_FAILURE() << "the teardown did not throw";
  } catch (const ExitError& e) {
    EXPECT_EQ(e.id, model.first_error)
        << "the exception of " << sc.cleanups[static_cast<size_t>(e.id)].label
        << " propagated, not the first one";
  }
  ExpectLog(sc, model, "when the teardown threw");
  ExerciseOtherContexts(&source, k);
  FinishScenario(&sc, &model, &source);
  g_scenario = nullptr;
}

TEST_P(TeardownExitTest, EverySiteStartAndFinish) {
  const std::vector<Site> sites = Sites();
  for (size_t i = 0; i < sites.size(); ++i) {
    const Site& site = sites[i];
    for (Start start : {Start::kDestroyRoot, Start::kResetRoot, Start::kDestroyChildrenOfTop}) {
      if (exit() == Exit::kThrow) {
        SCOPED_TRACE(::testing::Message() << "site " << i << " (" << site.name << " at "
                                          << kNodeNames[site.inserts[0].owner] << "), start "
                                          << kStartNames[static_cast<int>(start)]);
        RunThrowScenario(site, kind(), start);
        continue;
      }
      for (Finish finish :
           {Finish::kDestroyRoot, Finish::kResetRoot, Finish::kResetRootReleaseAll,
            Finish::kDestroyTop, Finish::kResetTop, Finish::kResetOwnerThenDestroyRoot}) {
        SCOPED_TRACE(::testing::Message()
                     << "site " << i << " (" << site.name << " at "
                     << kNodeNames[site.inserts[0].owner] << "), start "
                     << kStartNames[static_cast<int>(start)] << ", finish "
                     << kFinishNames[static_cast<int>(finish)]);
        RunLongjmpScenario(site, kind(), start, finish);
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllExitsAndKinds, TeardownExitTest,
                         ::testing::Combine(::testing::Values(Exit::kLongjmp, Exit::kThrow),
                                            ::testing::Values(KindId::kPool, KindId::kRewindPool,
                                                              KindId::kFreelist)),
                         ParamName);

// --- Failure handlers that leave a failing call -------------------------------------

enum class Entry {
  kAlloc,
  kAllocZero,
  kAllocAligned,
  kAllocBytes,
  kAllocZeroArray,
  kStrdup,
  kReallocUnsized,
  kReallocSized,
  kCreateChild,
  kAddCleanupCallable,
  kAddCleanupFn,
  kNew,            // New<T> of a big T: the object's memory fails
  kNewSmall,       // New<T> in an exhausted context
};

const char* const kEntryNames[] = {"Alloc",         "AllocZero",          "AllocAligned",
                                   "AllocBytes",    "AllocZeroArray",     "Strdup",
                                   "Realloc(p, n)", "Realloc(p, old, n)", "CreateChild",
                                   "AddCleanup(callable)", "AddCleanup(fn, arg)", "New<Big>",
                                   "New<Small> (exhausted)"};

struct FailCase {
  Entry entry;
  Failure failure;
};

std::vector<FailCase> FailCases() {
  std::vector<FailCase> v;
  for (Entry e : {Entry::kAlloc, Entry::kAllocZero, Entry::kAllocAligned, Entry::kAllocBytes,
                  Entry::kAllocZeroArray, Entry::kStrdup, Entry::kReallocUnsized,
                  Entry::kReallocSized, Entry::kCreateChild, Entry::kAddCleanupCallable,
                  Entry::kAddCleanupFn, Entry::kNew, Entry::kNewSmall}) {
    v.push_back({e, Failure::kOutOfMemory});
    v.push_back({e, Failure::kLimit});
  }
  for (Entry e : {Entry::kAlloc, Entry::kAllocZero, Entry::kAllocAligned, Entry::kAllocBytes,
                  Entry::kAllocZeroArray, Entry::kStrdup, Entry::kReallocUnsized,
                  Entry::kReallocSized, Entry::kCreateChild}) {
    v.push_back({e, Failure::kBadSize});
  }
  v.push_back({Entry::kAllocAligned, Failure::kBadAlignment});
  v.push_back({Entry::kReallocUnsized, Failure::kUnsupported});  // small pool chunks
  v.push_back({Entry::kCreateChild, Failure::kBadArgument});     // a null name
  v.push_back({Entry::kAddCleanupFn, Failure::kBadArgument});    // a null function
  return v;
}

struct Big {
  char bytes[200000];
  ~Big() { ++destroyed; }
  static int destroyed;
};
int Big::destroyed = 0;

struct Small {
  int value = 7;
  ~Small() { ++destroyed; }
  static int destroyed;
};
int Small::destroyed = 0;

int g_fail_cleanup_ran = 0;

// Uses up the context's current block: the next small request needs a new
// block, which the source (failing) or the limit refuses.
void Exhaust(Context* ctx) {
  for (int i = 0; i < 1000000 && ctx->TryAllocBytes(8) != nullptr; ++i) {
  }
  ASSERT_NE(ctx->last_failure(), Failure::kNone);
}

struct Prepared {
  char* small = nullptr;   // 64 bytes
  char* large = nullptr;   // 10000 bytes: a pool's large chunk
  std::string big_string;  // 200000 characters
};

// The failing call, a few calls deep. Returns only if nothing failed.
ABSL_ATTRIBUTE_NOINLINE void FailingCall(Context* ctx, const FailCase& fc, const Prepared& p,
                                         bool pool) {
  volatile char scratch[1024];
  scratch[0] = 0;
  const bool bad_size = fc.failure == Failure::kBadSize;
  const size_t n = bad_size ? kMaxAllocSize + 1 : 200000;
  switch (fc.entry) {
    case Entry::kAlloc:
      ctx->Alloc(n);
      break;
    case Entry::kAllocZero:
      ctx->AllocZero(n);
      break;
    case Entry::kAllocAligned:
      ctx->AllocAligned(fc.failure == Failure::kBadAlignment ? 16 : n,
                        fc.failure == Failure::kBadAlignment ? 3 : 64);
      break;
    case Entry::kAllocBytes:
      ctx->AllocBytes(n);
      break;
    case Entry::kAllocZeroArray:
      if (bad_size) {
        ctx->AllocZeroArray(~size_t{0} / 2, 4);
      } else {
        ctx->AllocZeroArray(1000, 200);
      }
      break;
    case Entry::kStrdup:
      if (bad_size) {
        ctx->Strdup(std::string_view(p.big_string.data(), kMaxAllocSize));
      } else {
        ctx->Strdup(p.big_string);
      }
      break;
    case Entry::kReallocUnsized:
      if (fc.failure == Failure::kUnsupported) {
        ctx->Realloc(p.small, 100);
      } else {
        ctx->Realloc(pool ? p.large : p.small, bad_size ? n : 300000);
      }
      break;
    case Entry::kReallocSized:
      ctx->Realloc(p.small, 64, bad_size ? n : 300000);
      break;
    case Entry::kCreateChild:
      if (fc.failure == Failure::kBadArgument) {
        ctx->CreateChild(nullptr, PoolKind());
      } else if (bad_size) {
        PoolOptions huge;
        huge.initial_block_size = size_t{1} << 60;
        FreelistOptions fhuge;
        fhuge.initial_block_size = size_t{1} << 60;
        ctx->CreateChild("huge", pool ? PoolKind(huge) : FreelistKind(fhuge));
      } else {
        ctx->CreateChild("child", pool ? PoolKind() : FreelistKind());
      }
      break;
    case Entry::kAddCleanupCallable:
      ctx->AddCleanup([] { ++g_fail_cleanup_ran; });
      break;
    case Entry::kAddCleanupFn:
      ctx->AddCleanup(fc.failure == Failure::kBadArgument
                          ? nullptr
                          : static_cast<CleanupFn>([](void*) { ++g_fail_cleanup_ran; }),
                      nullptr);
      break;
    case Entry::kNew:
      New<Big>(ctx);
      break;
    case Entry::kNewSmall:
      New<Small>(ctx);
      break;
  }
  (void)scratch[0];
}

bool NeedsExhaustion(Entry e) {
  return e == Entry::kAddCleanupCallable || e == Entry::kAddCleanupFn || e == Entry::kNewSmall;
}

bool Applies(const FailCase& fc, KindId k) {
  const bool pool = k != KindId::kFreelist;
  // Small pool chunks refuse the unsized realloc; in direct mode a pool has
  // only large chunks, which take it.
  if (fc.failure == Failure::kUnsupported) return pool && !internal::kDirect;
  return true;
}

using FailureExitTest = ExitTest;

ABSL_ATTRIBUTE_NOINLINE void RunFailCase(const FailCase& fc, Exit exit, KindId k) {
  const bool pool = k != KindId::kFreelist;
  FailingBlockSource source;
  ContextOptions po;
  po.block_source = &source;
  Context* parent = Context::Create(nullptr, "parent", Kind(k), po);
  parent->SetFailureHandler(&LeavingHandler);  // inherited
  Context* ctx = parent->CreateChild("failing", Kind(k));
  Prepared p;
  p.small = static_cast<char*>(ctx->Alloc(64));
  std::memset(p.small, 0x11, 64);
  p.large = static_cast<char*>(ctx->Alloc(10000));
  std::memset(p.large, 0x22, 10000);
  p.big_string.assign(200000, 'x');
  Small::destroyed = Big::destroyed = 0;
  g_fail_cleanup_ran = 0;
  Small* before = New<Small>(ctx);
  ASSERT_NE(before, nullptr);

  const bool capacity = fc.failure == Failure::kOutOfMemory || fc.failure == Failure::kLimit;
  if (fc.failure == Failure::kLimit) {
    ASSERT_TRUE(ctx->SetLimit(ctx->SubtreeBytes() + 100).ok());
    if (NeedsExhaustion(fc.entry)) Exhaust(ctx);
  } else if (fc.failure == Failure::kOutOfMemory) {
    source.FailFrom(1);
    source.FailReallocate(true);  // a pool's large chunk grows through Reallocate
    if (NeedsExhaustion(fc.entry)) Exhaust(ctx);
  }
  std::string error;
  ASSERT_TRUE(ctx->Check(&error)) << error;
  const int64_t blocks = source.live_blocks();
  const size_t bytes = source.live_bytes();
  const size_t ctx_bytes = ctx->bytes_in_blocks();
  g_handler_calls = 0;
  g_handler_failure = Failure::kNone;
  g_handler_context = nullptr;
  g_exit = exit;
  g_current_cleanup = -1;

  StartCountingHeap();
  if (exit == Exit::kLongjmp) {
    if (setjmp(g_jump) == 0) {
      FailingCall(ctx, fc, p, pool);
      StopCountingHeap();
      ADD_FAILURE() << "the call did not fail";
      return;
    }
    ScribbleStack();
  } else {
    try {
      FailingCall(ctx, fc, p, pool);
      StopCountingHeap();
      ADD_FAILURE() << "the call did not fail";
      return;
    } catch (const ExitError& e) {
      EXPECT_EQ(e.id, -1);
    }
  }
  HeapCount heap = StopCountingHeap();
  EXPECT_EQ(heap.news, 0) << "the failure path allocated on the heap before the handler";
  EXPECT_EQ(heap.deletes, 0);

  EXPECT_EQ(g_handler_calls, 1);
  EXPECT_EQ(g_handler_failure, fc.failure) << FailureName(g_handler_failure);
  EXPECT_EQ(g_handler_context, ctx);
  EXPECT_EQ(ctx->last_failure(), fc.failure);
  // Nothing changed.
  source.Heal();
  EXPECT_EQ(source.live_blocks(), blocks);
  EXPECT_EQ(source.live_bytes(), bytes);
  EXPECT_EQ(ctx->bytes_in_blocks(), ctx_bytes);
  EXPECT_EQ(ctx->first_child(), nullptr);
  ASSERT_TRUE(ctx->Check(&error)) << error;
  for (int i = 0; i < 64; ++i) ASSERT_EQ(p.small[i], 0x11);
  for (int i = 0; i < 10000; ++i) ASSERT_EQ(p.large[i], 0x22);
  EXPECT_EQ(Small::destroyed, 0);
  EXPECT_EQ(Big::destroyed, 0);

  // Usable: every entry point works once the failure is gone.
  ExerciseOtherContexts(&source, k);
  if (capacity) {
    ASSERT_TRUE(ctx->SetLimit(kNoLimit).ok());
  }
  EXPECT_NE(ctx->Alloc(1000), nullptr);
  EXPECT_NE(ctx->AllocAligned(100, 256), nullptr);
  EXPECT_NE(ctx->Strdup("still here"), nullptr);
  void* q = ctx->Realloc(p.small, 64, 5000);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(static_cast<char*>(q)[63], 0x11);
  Small* after = New<Small>(ctx);
  EXPECT_EQ(after->value, 7);
  ctx->AddCleanup([] { ++g_fail_cleanup_ran; });
  Context* child = ctx->CreateChild("child-after", Kind(k));
  EXPECT_NE(child->Alloc(30000), nullptr);
  ExpectCheck(ctx);

  // Another thread takes the failing context's tree over.
  HandOffAndDestroy(parent, k);
  EXPECT_EQ(Small::destroyed, 2);
  EXPECT_EQ(Big::destroyed, 0);
  EXPECT_EQ(g_fail_cleanup_ran, 1);
  EXPECT_EQ(source.live_blocks(), 0);
  EXPECT_EQ(source.bad_releases(), 0);
}

TEST_P(FailureExitTest, EveryFailureKindAndEntryPoint) {
  for (const FailCase& fc : FailCases()) {
    if (!Applies(fc, kind())) continue;
    SCOPED_TRACE(::testing::Message() << kEntryNames[static_cast<int>(fc.entry)] << " failing with '"
                                      << FailureName(fc.failure) << "'");
    RunFailCase(fc, exit(), kind());
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// A handler that leaves the same failure again and again: nothing
// accumulates (the finding's reproducer ran a thousand failures).
TEST_P(FailureExitTest, RepeatedFailuresAccumulateNothing) {
  CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  o.limit = 64 * 1024;
  Context* ctx = Context::Create(nullptr, "interpreter-state", Kind(kind()), o);
  ctx->SetFailureHandler(&LeavingHandler);
  const int64_t blocks = source.live_blocks();
  g_handler_calls = 0;
  StartCountingHeap();
  for (volatile int i = 0; i < 300; ++i) {
    if (exit() == Exit::kLongjmp) {
      if (setjmp(g_jump) == 0) {
        if (i % 3 == 0) ctx->AllocAligned(16, 3);
        if (i % 3 == 1) ctx->Alloc(1 << 20);
        ctx->AllocZeroArray(~size_t{0}, 2);
      }
    } else {
      try {
        if (i % 3 == 0) ctx->AllocAligned(16, 3);
        if (i % 3 == 1) ctx->Alloc(1 << 20);
        ctx->AllocZeroArray(~size_t{0}, 2);
      } catch (const ExitError&) {
      }
    }
  }
  HeapCount heap = StopCountingHeap();
  EXPECT_EQ(heap.news, 0);
  EXPECT_EQ(g_handler_calls, 300);
  EXPECT_EQ(source.live_blocks(), blocks);
  ExpectCheck(ctx);
  HandOffAndDestroy(ctx, kind());
  EXPECT_EQ(source.live_blocks(), 0);
}

INSTANTIATE_TEST_SUITE_P(AllExitsAndKinds, FailureExitTest,
                         ::testing::Combine(::testing::Values(Exit::kLongjmp, Exit::kThrow),
                                            ::testing::Values(KindId::kPool, KindId::kRewindPool,
                                                              KindId::kFreelist)),
                         ParamName);

// --- Constructors that leave ------------------------------------------------------

std::vector<int> g_destroyed;  // ids of Tracked objects, in destructor order

struct Tracked {
  explicit Tracked(int id) : id(id) {}
  ~Tracked() { g_destroyed.push_back(id); }
  int id;
};

int g_exploding_destroyed = 0;

// Its constructor leaves, optionally after making an object of its own in
// the same context (that one exists: its destructor runs at the teardown).
struct Exploding {
  Exploding(Context* ctx, bool nested) {
    if (nested) New<Tracked>(ctx, 99);
    Leave();
  }
  ~Exploding() { ++g_exploding_destroyed; }
  char payload[100];
};

struct TriviallyExploding {
  TriviallyExploding() { Leave(); }
  int value;
};
static_assert(std::is_trivially_destructible_v<TriviallyExploding>, "");

// A callable cleanup whose move constructor leaves.
int g_exploding_move_ran = 0;
struct ExplodingMove {
  ExplodingMove() = default;
  ExplodingMove(const ExplodingMove&) = delete;
  ExplodingMove(ExplodingMove&&) { Leave(); }
  void operator()() { ++g_exploding_move_ran; }
};

enum class Ctor { kNonTrivial, kNonTrivialNested, kTrivial, kCleanupMove };
const char* const kCtorNames[] = {"New<Exploding>", "New<Exploding> after a nested New",
                                  "New<TriviallyExploding>", "AddCleanup(ExplodingMove)"};

ABSL_ATTRIBUTE_NOINLINE void Construct(Context* ctx, Ctor c) {
  volatile char scratch[1024];
  scratch[0] = 0;
  switch (c) {
    case Ctor::kNonTrivial:
      New<Exploding>(ctx, ctx, false);
      break;
    case Ctor::kNonTrivialNested:
      New<Exploding>(ctx, ctx, true);
      break;
    case Ctor::kTrivial:
      New<TriviallyExploding>(ctx);
      break;
    case Ctor::kCleanupMove:
      ctx->AddCleanup(ExplodingMove());
      break;
  }
  (void)scratch[0];
}

using ConstructorExitTest = ExitTest;

ABSL_ATTRIBUTE_NOINLINE void RunConstructorCase(Ctor c, int finish, Exit exit, KindId k) {
  CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* parent = Context::Create(nullptr, "parent", Kind(k), o);
  // Room for every object in the first block: the heap count below is of
  // the constructors' exits alone, not of a block acquired on the way.
  Context* ctx = parent->CreateChild("objects", Kind(k, kDefaultFirstBlockSize));
  g_destroyed.clear();
  g_exploding_destroyed = 0;
  g_exploding_move_ran = 0;
  New<Tracked>(ctx, 1);
  New<Tracked>(ctx, 2);
  ctx->AddCleanup([](void*) { g_destroyed.push_back(50); }, nullptr);
  g_exit = exit;
  g_current_cleanup = -1;
  StartCountingHeap();
  if (exit == Exit::kLongjmp) {
    if (setjmp(g_jump) == 0) {
      Construct(ctx, c);
      StopCountingHeap();
      ADD_FAILURE() << "the constructor did not leave";
      return;
    }
    ScribbleStack();
  } else {
    try {
      Construct(ctx, c);
      StopCountingHeap();
      ADD_FAILURE() << "the constructor did not leave";
      return;
    } catch (const ExitError&) {
    }
  }
  HeapCount heap = StopCountingHeap();
  // (Direct mode: every chunk is an allocation of the system's own.)
  if (!internal::kDirect) {
    EXPECT_EQ(heap.news, 0);
  }
  ExpectCheck(ctx);
  ExerciseOtherContexts(&source, k);
  // Registration goes on after the exit, the records are sound.
  New<Tracked>(ctx, 3);
  ctx->AddCleanup([](void*) { g_destroyed.push_back(51); }, nullptr);
  std::vector<int> expected = {51, 3};
  if (c == Ctor::kNonTrivialNested) expected.push_back(99);
  expected.insert(expected.end(), {50, 2, 1});
  switch (finish) {
    case 0:
      ctx->Destroy();
      break;
    case 1:
      ctx->Reset();
      break;
    case 2:
      ctx->Reset(ResetOptions::ReleaseAll());
      break;
    default:
      parent->Reset();  // an ancestor
      break;
  }
  EXPECT_EQ(g_destroyed, expected);
  EXPECT_EQ(g_exploding_destroyed, 0) << "a destructor ran for an object never constructed";
  EXPECT_EQ(g_exploding_move_ran, 0);
  if (finish == 1 || finish == 2) {
    ExpectCheck(ctx);
    New<Tracked>(ctx, 4);
    g_destroyed.clear();
  }
  ExpectCheck(parent);
  HandOffAndDestroy(parent, k);
  if (finish == 1 || finish == 2) {
    EXPECT_EQ(g_destroyed, std::vector<int>{4});
  }
  EXPECT_EQ(g_exploding_destroyed, 0);
  EXPECT_EQ(source.live_blocks(), 0);
}

TEST_P(ConstructorExitTest, NewAndCallableMoveConstructors) {
  for (Ctor c : {Ctor::kNonTrivial, Ctor::kNonTrivialNested, Ctor::kTrivial, Ctor::kCleanupMove}) {
    for (int finish = 0; finish < 4; ++finish) {
      SCOPED_TRACE(::testing::Message() << kCtorNames[static_cast<int>(c)] << ", finish " << finish);
      RunConstructorCase(c, finish, exit(), kind());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllExitsAndKinds, ConstructorExitTest,
                         ::testing::Combine(::testing::Values(Exit::kLongjmp, Exit::kThrow),
                                            ::testing::Values(KindId::kPool, KindId::kRewindPool,
                                                              KindId::kFreelist)),
                         ParamName);

}  // namespace
}  // namespace mcx

namespace mcx {
namespace {

// --- An exception held across a longjmp (found by the tree fuzzer) ---------------
//
// DestroyChildren kept the first exception a child's teardown threw in a
// local std::exception_ptr while it destroyed the older children; a cleanup
// of an older child that longjmps abandoned that frame and the exception
// leaked (LeakSanitizer: "Direct leak of 132 byte(s) ...
// __cxa_allocate_exception"), its destructor never run. It is now kept in the
// thread's walk record, which the next walk drops, as Context::TearDown
// keeps its own.

int g_errors_alive = 0;
struct CountedError {
  CountedError() { ++g_errors_alive; }
  CountedError(const CountedError&) { ++g_errors_alive; }
  ~CountedError() { --g_errors_alive; }
};

TEST(HeldExceptionTest, DestroyChildrenReleasesAHeldExceptionWhenAnOlderChildLongjmps) {
  CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  g_errors_alive = 0;
  Context* parent = Context::Create(nullptr, "parent", PoolKind(), o);
  Context* older = parent->CreateChild("older", PoolKind());  // torn down second
  older->AddCleanup([](void*) { std::longjmp(g_jump, 1); }, nullptr);
  Context* newer = parent->CreateChild("newer", PoolKind());  // torn down first
  newer->AddCleanup([](void*) { throw CountedError(); }, nullptr);
  if (setjmp(g_jump) == 0) {
    parent->DestroyChildren();
    ADD_FAILURE() << "the older child's cleanup did not jump";
  }
  ScribbleStack();
  parent->Destroy();  // finishes the older child
  Context* x = Context::Create(nullptr, "x", PoolKind(), o);
  x->Destroy();  // a further walk drops every record the longjmp left
  EXPECT_EQ(g_errors_alive, 0) << "the exception the newer child's cleanup threw was never "
                                  "released (DestroyChildren held it across the longjmp)";
  EXPECT_EQ(source.live_blocks(), 0);
}

// The contrast: within one teardown, a cleanup throws and a later one
// longjmps. The teardown keeps the exception in the thread's walk record,
// which the next walk drops: nothing leaks.
TEST(HeldExceptionTest, TearDownReleasesAHeldExceptionWhenALaterCleanupLongjmps) {
  CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  g_errors_alive = 0;
  Context* parent = Context::Create(nullptr, "parent", PoolKind(), o);
  Context* older = parent->CreateChild("older", PoolKind());
  older->AddCleanup([](void*) { std::longjmp(g_jump, 1); }, nullptr);
  Context* newer = parent->CreateChild("newer", PoolKind());
  newer->AddCleanup([](void*) { throw CountedError(); }, nullptr);
  if (setjmp(g_jump) == 0) {
    parent->Destroy();
    ADD_FAILURE() << "the older child's cleanup did not jump";
  }
  ScribbleStack();
  parent->Destroy();
  EXPECT_EQ(g_errors_alive, 0);
  EXPECT_EQ(source.live_blocks(), 0);
}

}  // namespace
}  // namespace mcx
