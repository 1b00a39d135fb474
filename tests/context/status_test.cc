// Context::SetParent and SetLimit (absl::Status, context/status.cc, in
// //context) and their core forms TrySetParent and TrySetLimit (Failure, in
// //context:core, which the C API calls): the same decisions, the same
// last_failure(), and the statuses' codes and messages.

#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/pool/pool.h"

namespace mcx {
namespace {

class StatusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    top_ = Context::Create(nullptr, "top", PoolKind());
    a_ = top_->CreateChild("a", PoolKind());
    b_ = a_->CreateChild("b", PoolKind());
  }
  void TearDown() override { top_->Destroy(); }

  Context* top_ = nullptr;
  Context* a_ = nullptr;  // top -> a -> b
  Context* b_ = nullptr;
};

// A cycle: kCycle from both, InvalidArgument naming both contexts; nothing
// moves.
TEST_F(StatusTest, CycleIsRefusedByBothForms) {
  EXPECT_EQ(a_->TrySetParent(b_), Failure::kCycle);
  EXPECT_EQ(a_->last_failure(), Failure::kCycle);
  absl::Status s = a_->SetParent(b_);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "mcx: cannot move context 'a' under 'b': it would become its own ancestor");
  EXPECT_EQ(a_->parent(), top_);
  EXPECT_EQ(a_->TrySetParent(a_), Failure::kCycle);
}

// A limit of the new ancestors: kLimit, ResourceExhausted naming the limited
// context and the bytes; nothing moves.
TEST_F(StatusTest, LimitOfTheNewParentIsRefusedByBothForms) {
  ContextOptions limited;
  limited.limit = 9000;
  Context* small = top_->CreateChild("small", PoolKind(), limited);
  b_->Alloc(9000);  // more than `small` has room for
  const size_t bytes = b_->SubtreeBytes();
  ASSERT_GT(bytes + small->SubtreeBytes(), 9000u);
  EXPECT_EQ(b_->TrySetParent(small), Failure::kLimit);
  EXPECT_EQ(b_->last_failure(), Failure::kLimit);
  absl::Status s = b_->SetParent(small);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(),
            "mcx: moving context 'b' (" + std::to_string(bytes) +
                " bytes) under 'small' would exceed the limit of 'small' (9000 bytes)");
  EXPECT_EQ(b_->parent(), a_);
}

// A move that is allowed: kNone and OK, and it happens.
TEST_F(StatusTest, AllowedMovesSucceedInBothForms) {
  EXPECT_EQ(b_->TrySetParent(top_), Failure::kNone);
  EXPECT_EQ(b_->parent(), top_);
  EXPECT_TRUE(b_->SetParent(a_).ok());
  EXPECT_EQ(b_->parent(), a_);
  EXPECT_EQ(b_->TrySetParent(a_), Failure::kNone);  // already there
}

// A limit below what the subtree holds: kLimit, FailedPrecondition with the
// bytes held (the side record that keeps the limit counts too, once made);
// kNoLimit removes a limit; a limit that fits is set.
TEST_F(StatusTest, SetLimitAndTrySetLimitAgree) {
  EXPECT_EQ(a_->TrySetLimit(1000), Failure::kLimit);
  EXPECT_EQ(a_->last_failure(), Failure::kLimit);
  EXPECT_EQ(a_->limit(), kNoLimit);
  const size_t held = a_->SubtreeBytes();
  absl::Status s = a_->SetLimit(1000);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "mcx: context 'a' already holds " + std::to_string(held) +
                             " bytes in its subtree, more than the limit 1000");
  EXPECT_EQ(a_->TrySetLimit(held + 100), Failure::kNone);
  EXPECT_EQ(a_->limit(), held + 100);
  EXPECT_TRUE(a_->SetLimit(kNoLimit).ok());
  EXPECT_EQ(a_->limit(), kNoLimit);
  EXPECT_TRUE(a_->SetLimit(held).ok());
  EXPECT_EQ(a_->limit(), held);
  EXPECT_EQ(a_->TrySetLimit(kNoLimit), Failure::kNone);
  EXPECT_EQ(a_->limit(), kNoLimit);
}

}  // namespace
}  // namespace mcx
