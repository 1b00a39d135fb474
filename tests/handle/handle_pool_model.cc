#include "tests/handle/handle_pool_model.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/freelist/freelist.h"
#include "mcx/handle/handle_pool.h"
#include "mcx/pool/pool.h"

namespace mcx {
namespace handle_model {
namespace {

// Reads the input a byte at a time; zeros past its end.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  bool done() const { return pos_ >= size_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

int misuse_reports = 0;
void CountMisuse(const char*) { ++misuse_reports; }

struct ModelClass {
  size_t slot_size = 0;
  uint32_t first = 0;
  uint32_t grow = 0;  // rounded up to a power of two, or 0
  uint32_t capacity = 0;
  std::vector<uint32_t> free;      // LIFO: back is the head
  std::vector<uint32_t> version;   // per slot
  std::vector<uint8_t> state;      // 0 free, 1 live, 2 retired
};

struct Live {
  Handle h;
  size_t size;
  uint8_t pattern;
};

class Program {
 public:
  explicit Program(Reader* in) : in_(in) {}

  Summary Run() {
    MisuseHandler previous = SetMisuseHandler(&CountMisuse);
    misuse_reports = 0;
    Configure();
    const bool pool_kind = in_->Byte() % 2 == 0;
    owner_ = Context::Create(nullptr, "owner", FreelistKind());
    frame_ = owner_->CreateChild("frame", pool_kind ? PoolKind() : FreelistKind());
    NewPool();
    for (int op = 0; op < 400 && !in_->done(); ++op) {
      op_ = op;
      Step(in_->Byte());
      ++summary_.ops;
    }
    CheckAll();
    owner_->Destroy();
    SetMisuseHandler(previous);
    return summary_;
  }

 private:
  [[noreturn]] void Violation(const char* what, const std::string& detail) {
    std::fprintf(stderr, "handle pool model: VIOLATION at op %d (%s): %s\n", op_, what,
                 detail.c_str());
    std::abort();
  }
  void Expect(bool ok, const char* what, const std::string& detail = "") {
    if (!ok) Violation(what, detail);
  }

  void Configure() {
    const int classes = 1 + in_->Byte() % 4;
    size_t size = 0;
    for (int i = 0; i < classes; ++i) {
      size += 8 + 8 * (in_->Byte() % 16);
      uint32_t count = in_->Byte() % 6;
      uint32_t grow = in_->Byte() % 5;
      if (count == 0 && grow == 0) count = 1;
      options_.AddClass(size, count, grow);
    }
    options_.spill = in_->Byte() % 4 != 0;
    options_.max_version = 1 + in_->Byte() % 5;
    options_.alignment = size_t{8} << (in_->Byte() % 4);
  }

  void NewPool() {
    pool_ = HandlePool::Create(frame_, options_);
    Expect(pool_ != nullptr, "create");
    model_.clear();
    for (size_t i = 0; i < options_.num_classes; ++i) {
      ModelClass c;
      c.slot_size = options_.classes[i].slot_size;
      c.first = options_.classes[i].count;
      uint32_t g = options_.classes[i].grow;
      c.grow = 0;
      if (g != 0) {
        c.grow = 1;
        while (c.grow < g) c.grow <<= 1;
      }
      AddSlots(&c, c.first);
      model_.push_back(c);
    }
    live_.clear();
  }

  static void AddSlots(ModelClass* c, uint32_t n) {
    // The new slots are taken first, in index order.
    for (uint32_t k = n; k-- > 0;) c->free.push_back(c->capacity + k);
    c->capacity += n;
    c->version.resize(c->capacity, 0);
    c->state.resize(c->capacity, 0);
  }

  // What Allocate(size) must give: class and index, or -1.
  bool Predict(size_t size, uint32_t* cls, uint32_t* index) {
    uint32_t c = 0;
    while (c < model_.size() && model_[c].slot_size < size) ++c;
    if (c == model_.size()) return false;
    if (model_[c].free.empty() && model_[c].grow != 0) AddSlots(&model_[c], model_[c].grow);
    if (!model_[c].free.empty()) {
      *cls = c;
    } else {
      bool found = false;
      for (uint32_t k = c + 1; options_.spill && k < model_.size() && !found; ++k) {
        if (!model_[k].free.empty()) {
          *cls = k;
          found = true;
        }
      }
      if (!found) return false;
    }
    *index = model_[*cls].free.back();
    model_[*cls].free.pop_back();
    model_[*cls].state[*index] = 1;
    return true;
  }

  void Allocate(size_t size) {
    uint32_t cls = 0, index = 0;
    const bool expect = Predict(size, &cls, &index);
    Handle h = pool_->Allocate(size);
    if (!expect) {
      Expect(!h, "allocate", "the model has no slot, the pool gave one");
      ++summary_.failed_allocations;
      return;
    }
    Expect(static_cast<bool>(h), "allocate", "the pool gave no slot");
    Expect(h.size_class() == cls && h.index() == index &&
               h.version() == model_[cls].version[index] && h.tag() == pool_->tag(),
           "allocate",
           "handle " + std::to_string(h.size_class()) + "/" + std::to_string(h.index()) + "/" +
               std::to_string(h.version()) + ", model " + std::to_string(cls) + "/" +
               std::to_string(index) + "/" + std::to_string(model_[cls].version[index]));
    void* p = pool_->Get(h);
    Expect(p != nullptr, "allocate", "Get of a fresh handle");
    const uint8_t pattern = static_cast<uint8_t>(summary_.allocations * 37 + 1);
    std::memset(p, pattern, size);
    live_.push_back({h, size, pattern});
    ++summary_.allocations;
  }

  void FreeLive(size_t pick) {
    if (live_.empty()) return;
    const size_t i = pick % live_.size();
    const Live l = live_[i];
    CheckContents(l);
    Expect(pool_->Free(l.h), "free", "a live handle");
    live_[i] = live_.back();
    live_.pop_back();
    ModelFree(l.h);
  }

  // The model's side of a Free: the next version and the head of the free
  // list, or retirement.
  void ModelFree(Handle h) {
    ModelClass& c = model_[h.size_class()];
    const uint32_t index = h.index();
    if (c.version[index] >= options_.max_version) {
      c.state[index] = 2;
      ++summary_.retired;
    } else {
      ++c.version[index];
      c.state[index] = 0;
      c.free.push_back(index);
    }
    stale_.push_back(h);
    ++summary_.frees;
  }

  void CheckContents(const Live& l) {
    auto* p = pool_->Get<unsigned char>(l.h);
    Expect(p != nullptr, "get", "a live handle names nothing");
    for (size_t k = 0; k < l.size; ++k) {
      Expect(p[k] == l.pattern, "contents", "a live slot lost its bytes");
    }
  }

  void CheckAll() {
    for (const Live& l : live_) CheckContents(l);
    for (Handle h : stale_) Expect(pool_->Get(h) == nullptr, "stale get");
    for (Handle h : pre_reset_) {
      if (h.tag() != pool_->tag()) Expect(pool_->Get(h) == nullptr, "pre-reset get");
    }
    std::string error;
    Expect(pool_->Check(&error), "check", error);
    std::set<uint64_t> seen, expect;
    for (const Live& l : live_) expect.insert(l.h.bits());
    pool_->ForEach([&](Handle h, void* slot) {
      Expect(pool_->Get(h) == slot, "for-each", "a visited handle");
      seen.insert(h.bits());
    });
    Expect(seen == expect, "for-each", "visited other slots than the live ones");
    Expect(pool_->live() == live_.size(), "live count");
  }

  void Step(uint8_t op) {
    const uint8_t a = in_->Byte();
    switch (op % 16) {
      case 0: case 1: case 2: case 3: case 4:
        Allocate(a % 2 == 0 ? 1 + a % 64 : 1 + (size_t{a} * 3) % 200);
        break;
      case 5: case 6: case 7:
        FreeLive(a);
        break;
      case 8:  // free of a stale handle: false, nothing reported
        if (!stale_.empty()) {
          Handle h = stale_[a % stale_.size()];
          const int before = misuse_reports;
          Expect(!pool_->Free(h), "stale free", "a stale handle freed something");
          Expect(misuse_reports == before, "stale free", "reported as misuse");
          ++summary_.stale_frees;
        }
        break;
      case 9:  // get of a stale handle
        if (!stale_.empty()) {
          Expect(pool_->Get(stale_[a % stale_.size()]) == nullptr, "stale get");
          ++summary_.stale_gets;
        }
        break;
      case 10:  // get and free of a handle from before the reset
        if (!pre_reset_.empty()) {
          Handle h = pre_reset_[a % pre_reset_.size()];
          if (h.tag() == pool_->tag()) break;  // 65,535 pools later: tags repeat
          Expect(pool_->Get(h) == nullptr, "pre-reset get");
          const int before = misuse_reports;
          Expect(!pool_->Free(h), "pre-reset free");
          Expect(misuse_reports == before + 1, "pre-reset free", "not reported");
          ++summary_.pre_reset_gets;
        }
        break;
      case 11:  // reset the owner: the pool and every handle go
        for (const Live& l : live_) pre_reset_.push_back(l.h);
        for (Handle h : stale_) pre_reset_.push_back(h);
        stale_.clear();
        if (a % 2 == 0) {
          frame_->Reset();
        } else {
          owner_->Reset();  // the frame goes too
          frame_ = owner_->CreateChild("frame", a % 4 == 1 ? PoolKind() : FreelistKind());
        }
        NewPool();
        ++summary_.resets;
        break;
      case 12:  // destroy the pool alone
        for (const Live& l : live_) pre_reset_.push_back(l.h);
        for (Handle h : stale_) pre_reset_.push_back(h);
        stale_.clear();
        pool_->Destroy();
        NewPool();
        break;
      case 13:
        CheckAll();
        break;
      case 14:  // free everything through ForEach, class by class in index order
        if (a % 8 == 0) {
          std::vector<Live> all = live_;
          std::sort(all.begin(), all.end(), [](const Live& x, const Live& y) {
            return x.h.size_class() != y.h.size_class() ? x.h.size_class() < y.h.size_class()
                                                          : x.h.index() < y.h.index();
          });
          pool_->ForEach([&](Handle h, void*) { pool_->Free(h); });
          live_.clear();
          for (const Live& l : all) ModelFree(l.h);
        }
        break;
      default:  // a forged handle: never names anything
        Expect(pool_->Get(Handle::FromBits((uint64_t{a} << 40) | a)) == nullptr ||
                   Handle::FromBits((uint64_t{a} << 40) | a).tag() == pool_->tag(),
               "forged get");
        break;
    }
  }

  Reader* in_;
  HandlePoolOptions options_;
  Context* owner_ = nullptr;
  Context* frame_ = nullptr;
  HandlePool* pool_ = nullptr;
  std::vector<ModelClass> model_;
  std::vector<Live> live_;
  std::vector<Handle> stale_;      // freed handles of the current pool
  std::vector<Handle> pre_reset_;  // handles of pools that are gone
  Summary summary_;
  int op_ = -1;
};

}  // namespace

Summary RunProgram(const uint8_t* data, size_t size) {
  Reader in(data, size);
  Program p(&in);
  return p.Run();
}

}  // namespace handle_model
}  // namespace mcx
