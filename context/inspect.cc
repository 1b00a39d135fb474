// Block inspection: the generic half. The kinds do the looking (their
// `inspect` method); this file only dispatches and collects. It stays out of
// every allocation path, so it is written for clarity, not speed.

#include "mcx/context/inspect.h"

#include <cstring>
#include <functional>

#include "mcx/context/context.h"
#include "mcx/context/kind.h"

namespace mcx {

const char* BlockRoleName(BlockRole role) {
  switch (role) {
    case BlockRole::kFirst:
      return "first";
    case BlockRole::kNormal:
      return "normal";
    case BlockRole::kOversize:
      return "oversize";
    case BlockRole::kSpare:
      return "spare";
  }
  return "unknown";
}

const char* BlockInfo::Name() const { return label != nullptr ? label : BlockRoleName(role); }

uint64_t BlockInfo::Counter(const char* name) const {
  for (const BlockCounter& c : counters) {
    if (c.name != nullptr && std::strcmp(c.name, name) == 0) return c.value;
  }
  return 0;
}

bool BlockInfo::SetCounter(const char* name, uint64_t value) {
  for (BlockCounter& c : counters) {
    if (c.name == nullptr || std::strcmp(c.name, name) == 0) {
      c.name = name;
      c.value = value;
      return true;
    }
  }
  return false;
}

InspectVisitor::~InspectVisitor() = default;
void InspectVisitor::VisitBlock(const BlockInfo&) {}
void InspectVisitor::VisitSizeClass(const SizeClassInfo&) {}
void InspectVisitor::VisitFreeChunk(const SizeClassInfo&, const void*) {}

size_t ContextLayout::total_bytes() const {
  size_t n = 0;
  for (const BlockInfo& b : blocks) n += b.size;
  return n;
}

size_t ContextLayout::free_bytes() const {
  size_t n = 0;
  for (const BlockInfo& b : blocks) n += b.free_bytes + b.freelist_bytes;
  return n;
}

size_t ContextLayout::freelist_chunks() const {
  size_t n = 0;
  for (const BlockInfo& b : blocks) n += b.freelist_chunks;
  return n;
}

const BlockInfo* ContextLayout::FindBlock(BlockRole role, size_t n) const {
  for (const BlockInfo& b : blocks) {
    if (b.role == role && n-- == 0) return &b;
  }
  return nullptr;
}

// ContextLayout::BlockContaining
//
// Compares addresses as integers: relational comparison of pointers into
// different blocks is unspecified in C++, std::less is not.
const BlockInfo* ContextLayout::BlockContaining(const void* p) const {
  std::less<const void*> less;
  for (const BlockInfo& b : blocks) {
    const void* end = static_cast<const char*>(b.start) + b.size;
    if (!less(p, b.start) && less(p, end)) return &b;
  }
  return nullptr;
}

bool InspectContext(const Context* ctx, InspectVisitor* visitor) {
  const KindMethods* methods = ctx->kind();
  if (methods->inspect == nullptr) return false;
  methods->inspect(ctx, visitor);
  return true;
}

namespace {

class Collector final : public InspectVisitor {
 public:
  explicit Collector(ContextLayout* out) : out_(out) {}

  void VisitBlock(const BlockInfo& block) override { out_->blocks.push_back(block); }
  void VisitSizeClass(const SizeClassInfo& size_class) override {
    out_->size_classes.push_back({size_class, {}});
  }
  void VisitFreeChunk(const SizeClassInfo&, const void* chunk) override {
    // The protocol puts a class's chunks right after the class.
    if (!out_->size_classes.empty()) out_->size_classes.back().free_list.push_back(chunk);
  }

 private:
  ContextLayout* out_;
};

}  // namespace

ContextLayout InspectContext(const Context* ctx) {
  ContextLayout layout;
  layout.name = ctx->name();
  layout.kind = ctx->kind_name();
  Collector collector(&layout);
  layout.has_detail = InspectContext(ctx, &collector);
  return layout;
}

}  // namespace mcx
