// Handle pools (handle/handle_pool.h): every way a handle goes stale (freed,
// its slot reused, its context reset, its context destroyed and another made
// in its place, its slot's versions used up), foreign and forged handles,
// size classes with growth and spill, iteration, and the pool's life in its
// context.

#include "mcx/handle/handle_pool.h"

#include <algorithm>
#include <csetjmp>
#include <cstdint>
#include <cstring>
#include <new>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

std::vector<std::string>* reports = nullptr;
void Record(const char* message) { reports->push_back(message); }

class HandlePoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    reports = &misuse_;
    previous_ = SetMisuseHandler(&Record);
    ContextOptions o;
    o.block_source = &source_;
    ctx_ = Context::Create(nullptr, "owner", FreelistKind(), o);
  }
  void TearDown() override {
    if (ctx_ != nullptr) ctx_->Destroy();
    EXPECT_EQ(source_.live_blocks(), 0);
    SetMisuseHandler(previous_);
    reports = nullptr;
    EXPECT_TRUE(misuse_.empty()) << misuse_.front();
  }

  static HandlePoolOptions Small() {
    HandlePoolOptions o;
    o.AddClass(32, 4).AddClass(128, 2);
    return o;
  }

  // The one misuse report since the last call.
  std::string TakeMisuse() {
    EXPECT_EQ(misuse_.size(), 1u);
    std::string last = misuse_.empty() ? std::string() : misuse_.back();
    misuse_.clear();
    return last;
  }

  static void ExpectConsistent(const HandlePool* pool) {
    std::string error;
    EXPECT_TRUE(pool->Check(&error)) << error;
  }

  mcx::test::FailingBlockSource source_;
  Context* ctx_ = nullptr;
  std::vector<std::string> misuse_;
  MisuseHandler previous_ = nullptr;
};

TEST_F(HandlePoolTest, AllocateGetFree) {
  HandlePool* pool = HandlePool::Create(ctx_, Small());
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->context(), ctx_);
  Handle h = pool->Allocate(20);
  ASSERT_TRUE(h);
  EXPECT_EQ(h.size_class(), 0u);
  EXPECT_EQ(h.tag(), pool->tag());
  void* p = pool->Get(h);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kDefaultAlignment, 0u);
  std::memset(p, 0xAB, 20);
  EXPECT_EQ(pool->Get<char>(h), p);
  EXPECT_TRUE(pool->Contains(h));
  EXPECT_EQ(pool->live(), 1u);
  EXPECT_TRUE(pool->Free(h));
  EXPECT_EQ(pool->live(), 0u);
  EXPECT_EQ(pool->Get(Handle()), nullptr);
  EXPECT_FALSE(pool->Free(Handle()));  // as free(nullptr): nothing reported
  ExpectConsistent(pool);
}

// Stale after free: Get says nullptr, a second Free says false.
TEST_F(HandlePoolTest, StaleAfterFree) {
  HandlePool* pool = HandlePool::Create(ctx_, Small());
  Handle h = pool->Allocate(8);
  ASSERT_TRUE(pool->Free(h));
  EXPECT_EQ(pool->Get(h), nullptr);
  EXPECT_FALSE(pool->Contains(h));
  EXPECT_FALSE(pool->Free(h));
  EXPECT_EQ(pool->GetStats().stale_frees, 1u);
  ExpectConsistent(pool);
}

// Stale after the slot is reused: the new handle names the same slot with
// the next version; the old one names nothing, and freeing it leaves the
// new owner's slot alone.
TEST_F(HandlePoolTest, StaleAfterTheSlotIsReused) {
  HandlePool* pool = HandlePool::Create(ctx_, Small());
  Handle old = pool->Allocate(8);
  void* slot = pool->Get(old);
  ASSERT_TRUE(pool->Free(old));
  Handle now = pool->Allocate(8);
  EXPECT_EQ(now.index(), old.index());  // LIFO: the same slot
  EXPECT_EQ(now.size_class(), old.size_class());
  EXPECT_EQ(now.version(), old.version() + 1);
  EXPECT_NE(now, old);
  EXPECT_EQ(pool->Get(now), slot);
  std::strcpy(static_cast<char*>(slot), "mine");
  EXPECT_EQ(pool->Get(old), nullptr);
  EXPECT_FALSE(pool->Free(old));
  EXPECT_STREQ(pool->Get<char>(now), "mine");
  ExpectConsistent(pool);
}

// Stale after the context's reset: the pool went with it. A pool created
// in the context afterwards (at the same address, as a pool context bumps
// from the same first block) refuses the old handles, even those whose
// class, index and version its own handles repeat.
TEST_F(HandlePoolTest, StaleAfterTheContextsReset) {
  Context* frame = ctx_->CreateChild("frame", PoolKind());
  HandlePool* pool = HandlePool::Create(frame, Small());
  std::vector<Handle> before;
  for (int i = 0; i < 4; ++i) before.push_back(pool->Allocate(16));
  frame->Reset();
  HandlePool* again = HandlePool::Create(frame, Small());
  // The same memory, but in direct builds (a block per chunk, from the
  // system allocator) and under ASan or memcheck, whose allocators do not
  // hand freed memory straight back.
  if (!internal::kDirect && !internal::kAddressSanitizer && !test::UnderMemcheck()) {
    EXPECT_EQ(again, pool);
  }
  std::vector<Handle> after;
  for (int i = 0; i < 4; ++i) after.push_back(again->Allocate(16));
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(after[i].index(), before[i].index());
    EXPECT_EQ(after[i].version(), before[i].version());
    EXPECT_NE(after[i].tag(), before[i].tag());
    EXPECT_EQ(again->Get(before[i]), nullptr);
    EXPECT_NE(again->Get(after[i]), nullptr);
  }
  // Freeing one is misuse: it cannot have come from this pool.
  EXPECT_FALSE(again->Free(before[0]));
  EXPECT_NE(TakeMisuse().find("from before its context's reset"), std::string::npos);
  EXPECT_NE(again->Get(after[0]), nullptr);
  ExpectConsistent(again);
  frame->Destroy();
}

// The same after the context is destroyed and another takes its memory.
TEST_F(HandlePoolTest, StaleAfterTheContextIsDestroyed) {
  Context* a = ctx_->CreateChild("a", PoolKind());
  Handle h = HandlePool::Create(a, Small())->Allocate(16);
  a->Destroy();
  Context* b = ctx_->CreateChild("b", PoolKind());
  HandlePool* pool = HandlePool::Create(b, Small());
  Handle fresh = pool->Allocate(16);
  EXPECT_EQ(fresh.bits() & ~(uint64_t{0xFFFF} << 48), h.bits() & ~(uint64_t{0xFFFF} << 48));
  EXPECT_EQ(pool->Get(h), nullptr);
  EXPECT_NE(pool->Get(fresh), nullptr);
  b->Destroy();
}

// After its versions are used up a slot retires instead of wrapping: no
// handle it ever had names anything again, and others serve.
TEST_F(HandlePoolTest, StaleAfterTheVersionWouldWrap) {
  HandlePoolOptions o;
  o.AddClass(16, 2);
  o.max_version = 3;
  HandlePool* pool = HandlePool::Create(ctx_, o);
  std::vector<Handle> history;
  for (int i = 0; i < 4; ++i) {
    Handle h = pool->Allocate(16);
    EXPECT_EQ(h.index(), 0u);
    EXPECT_EQ(h.version(), static_cast<uint32_t>(i));
    history.push_back(h);
    ASSERT_TRUE(pool->Free(h));
  }
  EXPECT_EQ(pool->GetStats().classes[0].retired, 1u);
  Handle next = pool->Allocate(16);
  EXPECT_EQ(next.index(), 1u);  // slot 0 is retired
  for (Handle h : history) {
    EXPECT_EQ(pool->Get(h), nullptr);
    EXPECT_FALSE(pool->Free(h));
  }
  // Slot 1 retires too: the class is exhausted for good.
  ASSERT_TRUE(pool->Free(next));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(pool->Free(pool->Allocate(16)));
  EXPECT_FALSE(pool->Allocate(16));
  EXPECT_EQ(pool->last_failure(), Failure::kOutOfMemory);
  EXPECT_EQ(pool->GetStats().classes[0].retired, 2u);
  ExpectConsistent(pool);
}

// The same at the real limit: 2^22 - 1 frees of one slot, then it retires;
// the very first handle never matches anything in between.
TEST_F(HandlePoolTest, VersionsRunToTheLimitThenRetire) {
  if (mcx::test::UnderMemcheck()) GTEST_SKIP() << "four million frees under memcheck";
  HandlePoolOptions o;
  o.AddClass(16, 1);
  HandlePool* pool = HandlePool::Create(ctx_, o);
  const Handle first = pool->Allocate(16);
  ASSERT_TRUE(pool->Free(first));
  for (uint32_t v = 1; v <= kMaxHandleVersion; ++v) {
    Handle h = pool->Allocate(16);
    if (h.version() != v || pool->Get(first) != nullptr) {
      FAIL() << "version " << h.version() << " at step " << v;
    }
    pool->Free(h);
  }
  EXPECT_FALSE(pool->Allocate(16));
  EXPECT_EQ(pool->GetStats().classes[0].retired, 1u);
  EXPECT_EQ(pool->Get(first), nullptr);
}

// Handles of another live pool, and forged ones: Get refuses them quietly;
// Free reports them.
TEST_F(HandlePoolTest, ForeignAndForgedHandles) {
  HandlePool* a = HandlePool::Create(ctx_, Small());
  HandlePool* b = HandlePool::Create(ctx_, Small());
  Handle ha = a->Allocate(8);
  Handle hb = b->Allocate(8);
  EXPECT_EQ(ha.bits() & ~(uint64_t{0xFFFF} << 48), hb.bits() & ~(uint64_t{0xFFFF} << 48));
  EXPECT_EQ(a->Get(hb), nullptr);
  EXPECT_EQ(b->Get(ha), nullptr);
  EXPECT_FALSE(a->Free(hb));
  EXPECT_NE(TakeMisuse().find("did not hand out"), std::string::npos);
  EXPECT_NE(b->Get(hb), nullptr);
  // Forged: a class or index out of range, a version never handed out.
  const uint64_t tag = uint64_t{a->tag()} << 48;
  Handle bad_class = Handle::FromBits(tag | uint64_t{9} << 22);
  Handle bad_index = Handle::FromBits(tag | 1000);
  Handle future = Handle::FromBits(ha.bits() + (uint64_t{5} << 26));
  EXPECT_EQ(future.version(), ha.version() + 5);
  for (Handle h : {bad_class, bad_index, future}) {
    EXPECT_EQ(a->Get(h), nullptr);
    EXPECT_FALSE(a->Free(h));
    TakeMisuse();
  }
  EXPECT_NE(a->Get(ha), nullptr);
  ExpectConsistent(a);
  ExpectConsistent(b);
}

// The smallest class that fits; a full class spills to a larger one (or
// not, without `spill`); a size no class holds is kBadSize.
TEST_F(HandlePoolTest, ClassesAndSpill) {
  HandlePool* pool = HandlePool::Create(ctx_, Small());
  EXPECT_EQ(pool->Allocate(1).size_class(), 0u);
  EXPECT_EQ(pool->Allocate(32).size_class(), 0u);
  EXPECT_EQ(pool->Allocate(33).size_class(), 1u);
  EXPECT_FALSE(pool->Allocate(129));
  EXPECT_EQ(pool->last_failure(), Failure::kBadSize);
  EXPECT_EQ(pool->Allocate(0).size_class(), 0u);
  EXPECT_EQ(pool->Allocate(10).size_class(), 0u);  // class 0 now full (4)
  Handle spilled = pool->Allocate(10);
  EXPECT_EQ(spilled.size_class(), 1u);
  EXPECT_EQ(pool->GetStats().spills, 1u);
  EXPECT_FALSE(pool->Allocate(10));  // both full
  EXPECT_EQ(pool->last_failure(), Failure::kOutOfMemory);
  EXPECT_EQ(pool->GetStats().failed, 2u);

  HandlePoolOptions strict = Small();
  strict.spill = false;
  HandlePool* no_spill = HandlePool::Create(ctx_, strict);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(no_spill->Allocate(8));
  EXPECT_FALSE(no_spill->Allocate(8));
  EXPECT_TRUE(no_spill->Allocate(100));
  ExpectConsistent(pool);
  ExpectConsistent(no_spill);
}

// A class with growth adds blocks of slots from the context; handles in
// every block work; a growth the context refuses (a limit) leaves the spill.
TEST_F(HandlePoolTest, GrowthAddsBlocksFromTheContext) {
  HandlePoolOptions o;
  // Grows by 64 slots (33 rounded up): 128 KB blocks, each a block of the
  // context's own (above the freelist kind's chunk limit, 65,544 bytes).
  o.AddClass(2000, 3, /*grow=*/33).AddClass(4000, 1);
  HandlePool* pool = HandlePool::Create(ctx_, o);
  std::vector<Handle> hs;
  for (int i = 0; i < 3 + 64 * 4; ++i) {
    Handle h = pool->Allocate(20);
    ASSERT_TRUE(h);
    ASSERT_EQ(h.size_class(), 0u);
    std::memset(pool->Get(h), i, 20);
    hs.push_back(h);
  }
  HandlePool::Stats s = pool->GetStats();
  EXPECT_EQ(s.classes[0].slots, 3u + 64 * 4);
  EXPECT_EQ(s.classes[0].blocks, 5u);
  std::set<void*> distinct;
  for (size_t i = 0; i < hs.size(); ++i) {
    auto* p = pool->Get<unsigned char>(hs[i]);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(p[0], static_cast<unsigned char>(i));
    EXPECT_EQ(p[19], static_cast<unsigned char>(i));
    distinct.insert(p);
  }
  EXPECT_EQ(distinct.size(), hs.size());
  ExpectConsistent(pool);
  // The context refuses to grow: the larger class serves, then nothing.
  ASSERT_TRUE(ctx_->SetLimit(ctx_->SubtreeBytes()).ok());
  Handle spilled = pool->Allocate(20);
  EXPECT_EQ(spilled.size_class(), 1u);
  EXPECT_FALSE(pool->Allocate(20));
  EXPECT_EQ(pool->last_failure(), Failure::kLimit);
  ASSERT_TRUE(ctx_->SetLimit(kNoLimit).ok());
  EXPECT_TRUE(pool->Allocate(20));
  ExpectConsistent(pool);
}

// Slots of an alignment other than the default.
TEST_F(HandlePoolTest, SlotAlignment) {
  HandlePoolOptions o;
  o.AddClass(40, 10, 10);
  o.alignment = 64;
  HandlePool* pool = HandlePool::Create(ctx_, o);
  EXPECT_EQ(pool->GetStats().classes[0].stride, 64u);
  for (int i = 0; i < 30; ++i) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(pool->Get(pool->Allocate(40))) % 64, 0u);
  }
}

// ForEach visits exactly the live slots, and may free what it visits.
TEST_F(HandlePoolTest, ForEachVisitsLiveSlots) {
  HandlePoolOptions o;
  o.AddClass(16, 8, 8).AddClass(64, 4);
  HandlePool* pool = HandlePool::Create(ctx_, o);
  std::set<uint64_t> live;
  for (int i = 0; i < 30; ++i) live.insert(pool->Allocate(i % 3 == 0 ? 50 : 10).bits());
  int k = 0;
  for (auto it = live.begin(); it != live.end();) {
    if (k++ % 3 == 0) {
      pool->Free(Handle::FromBits(*it));
      it = live.erase(it);
    } else {
      ++it;
    }
  }
  std::set<uint64_t> seen;
  pool->ForEach([&](Handle h, void* slot) {
    EXPECT_EQ(pool->Get(h), slot);
    seen.insert(h.bits());
  });
  EXPECT_EQ(seen, live);
  pool->ForEach([&](Handle h, void*) { pool->Free(h); });
  EXPECT_EQ(pool->live(), 0u);
  for (uint64_t bits : live) EXPECT_EQ(pool->Get(Handle::FromBits(bits)), nullptr);
  ExpectConsistent(pool);
}

// Destroy ends the pool before its context: its memory goes back, its
// cleanup is removed, the context is reset without it.
TEST_F(HandlePoolTest, DestroyGivesTheMemoryBack) {
  const size_t before = ctx_->SubtreeBytes();
  HandlePoolOptions o;
  o.AddClass(4000, 64, 64);
  HandlePool* pool = HandlePool::Create(ctx_, o);
  for (int i = 0; i < 200; ++i) pool->Allocate(100);
  EXPECT_GT(ctx_->SubtreeBytes(), before + 200 * 4000);
  EXPECT_GT(pool->GetStats().bytes, size_t{200} * 4000);
  pool->Destroy();
  ctx_->Reset();
  EXPECT_LE(ctx_->SubtreeBytes(), before + ctx_->side_record_bytes());
}

// Invalid options are misuse, and make no pool.
TEST_F(HandlePoolTest, InvalidOptionsAreMisuse) {
  HandlePoolOptions none;
  EXPECT_EQ(HandlePool::Create(ctx_, none), nullptr);
  TakeMisuse();
  HandlePoolOptions descending;
  descending.AddClass(64, 1).AddClass(32, 1);
  EXPECT_EQ(HandlePool::Create(ctx_, descending), nullptr);
  TakeMisuse();
  HandlePoolOptions too_many;
  for (int i = 0; i < 17; ++i) too_many.AddClass(16 * (i + 1), 1);
  EXPECT_EQ(HandlePool::TryCreate(ctx_, too_many), nullptr);
  TakeMisuse();
  HandlePoolOptions bad_alignment;
  bad_alignment.AddClass(16, 1);
  bad_alignment.alignment = 24;
  EXPECT_EQ(HandlePool::Create(ctx_, bad_alignment), nullptr);
  TakeMisuse();
  HandlePoolOptions empty_class;
  empty_class.AddClass(16, 0);
  EXPECT_EQ(HandlePool::Create(ctx_, empty_class), nullptr);
  TakeMisuse();
  HandlePoolOptions huge;
  huge.AddClass(16, kMaxHandleSlots + 1);
  EXPECT_EQ(HandlePool::Create(ctx_, huge), nullptr);
  TakeMisuse();
}

int handler_calls = 0;
void CountingHandler(const FailureInfo&) { ++handler_calls; }

// Out of memory at creation: Create calls the handler and throws, TryCreate
// returns nullptr; either way nothing is left registered on the context.
TEST_F(HandlePoolTest, CreationFailuresLeaveNothingBehind) {
  handler_calls = 0;
  ASSERT_TRUE(ctx_->SetFailureHandler(&CountingHandler));
  HandlePoolOptions o;
  o.AddClass(64, 4).AddClass(20000, 4);  // the second class needs a block of its own
  for (int64_t n = 1; n <= 4; ++n) {
    source_.FailNth(n);
    HandlePool* p = HandlePool::TryCreate(ctx_, o);
    if (p != nullptr) {
      p->Destroy();
      continue;
    }
    EXPECT_EQ(ctx_->last_failure(), Failure::kOutOfMemory);
    source_.FailNth(n);
    EXPECT_THROW(HandlePool::Create(ctx_, o), std::bad_alloc);
  }
  EXPECT_GE(handler_calls, 1);
  source_.Heal();
  ctx_->Reset();  // no cleanup of a pool that was never made runs
  HandlePool* ok = HandlePool::Create(ctx_, o);
  EXPECT_NE(ok, nullptr);
  std::string error;
  EXPECT_TRUE(ctx_->Check(&error)) << error;
}

struct HandlerError {};
void ThrowingHandler(const FailureInfo&) { throw HandlerError(); }
std::jmp_buf* jump_target = nullptr;
void JumpingHandler(const FailureInfo&) { std::longjmp(*jump_target, 1); }

// Where the pool runs user code: the context's failure handler during
// Create (it may throw its own exception or longjmp), and ForEach's
// callback (it may throw). Either way nothing is left registered, the pool
// is unchanged, and the context is usable and consistent.
TEST_F(HandlePoolTest, ExitsFromHandlersAndCallbacksLeaveNothingBehind) {
  HandlePoolOptions o;
  o.AddClass(64, 4).AddClass(20000, 4);  // the second class needs a block of its own
  ASSERT_TRUE(ctx_->SetFailureHandler(&ThrowingHandler));
  source_.FailNth(1);
  EXPECT_THROW(HandlePool::Create(ctx_, o), HandlerError);

  ASSERT_TRUE(ctx_->SetFailureHandler(&JumpingHandler));
  std::jmp_buf env;
  jump_target = &env;
  volatile int jumped = 0;
  if (setjmp(env) == 0) {
    source_.FailNth(1);
    HandlePool::Create(ctx_, o);
  } else {
    jumped = 1;
  }
  EXPECT_EQ(jumped, 1);
  jump_target = nullptr;
  source_.Heal();
  ctx_->Reset();  // no cleanup of a pool that was never made runs
  std::string error;
  EXPECT_TRUE(ctx_->Check(&error)) << error;

  HandlePool* pool = HandlePool::Create(ctx_, o);
  Handle kept = pool->Allocate(10);
  for (int i = 0; i < 3; ++i) pool->Allocate(10);
  EXPECT_THROW(pool->ForEach([](Handle, void*) { throw HandlerError(); }), HandlerError);
  int freed = 0;
  EXPECT_THROW(pool->ForEach([&](Handle h, void*) {
                 pool->Free(h);
                 if (++freed == 2) throw HandlerError();
               }),
               HandlerError);
  EXPECT_EQ(pool->live(), 2u);
  EXPECT_EQ(pool->Get(kept), nullptr);  // the first visited: freed before the throw
  ExpectConsistent(pool);
  ctx_->Reset();
  EXPECT_TRUE(ctx_->Check(&error)) << error;
}

// Free slots are poisoned (ASan) and, in checking builds, clobbered.
TEST_F(HandlePoolTest, FreeSlotsArePoisonedAndClobbered) {
  HandlePool* pool = HandlePool::Create(ctx_, Small());
  Handle h = pool->Allocate(32);
  void* slot = pool->Get(h);
  std::memset(slot, 0x11, 32);
  pool->Free(h);
  if (internal::kAddressSanitizer) {
    EXPECT_TRUE(internal::IsPoisoned(slot, 32));
  }
  if (internal::kChecking) {
    unsigned char byte;
    internal::CopyFromPoisoned(&byte, slot, 1);
    EXPECT_EQ(byte, static_cast<unsigned char>(internal::kClobberByte));
  }
  ExpectConsistent(pool);  // checks the clobbering of every free slot
}

// Checking builds: using a pool after its context's reset is reported while
// its memory is not reused (the reset clobbers it).
TEST_F(HandlePoolTest, UseAfterResetIsReportedInCheckingBuilds) {
  if (!internal::kChecking || internal::kAddressSanitizer || mcx::test::UnderMemcheck()) {
    GTEST_SKIP() << "reads a reset pool's memory on purpose: checking builds without ASan";
  }
  Context* frame = ctx_->CreateChild("frame", PoolKind());
  HandlePool* pool = HandlePool::Create(frame, Small());
  Handle h = pool->Allocate(8);
  frame->Reset();
  EXPECT_EQ(pool->Get(h), nullptr);
  EXPECT_NE(TakeMisuse().find("which is gone"), std::string::npos);
  frame->Destroy();
}

}  // namespace
}  // namespace mcx
