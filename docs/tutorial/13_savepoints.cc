// Tutorial, part 12: savepoints. A parser that tries one rule, backs out of
// it, and tries the next, all in one pool context: Mark before, RewindTo on
// failure, DropMark on success. Then what a rewind undoes besides memory
// (cleanups and children since the mark), nested marks, and a kind that
// refuses.

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "docs/tutorial/check.h"
#include "mcx/context/context.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"

namespace {

// [START parser]
struct Node {
  const char* key;
  const char* value;  // for "key = text"
  long number;        // for "key: 123"
};

// Copies [from, to) into the context.
const char* Copy(mcx::Context* ctx, const char* from, const char* to) {
  char* s = static_cast<char*>(ctx->AllocBytes(static_cast<size_t>(to - from) + 1));
  std::memcpy(s, from, static_cast<size_t>(to - from));
  s[to - from] = '\0';
  return s;
}

// "key = text": builds the node as it goes, and may fail half-way.
Node* ParseAssignment(mcx::Context* ctx, const char* line) {
  Node* n = static_cast<Node*>(ctx->AllocZero(sizeof(Node)));
  const char* p = line;
  while (std::isalpha(static_cast<unsigned char>(*p))) ++p;
  n->key = Copy(ctx, line, p);
  if (std::strncmp(p, " = ", 3) != 0) return nullptr;  // not this rule
  n->value = Copy(ctx, p + 3, p + std::strlen(p));
  return n;
}

// "key: 123"
Node* ParseNumber(mcx::Context* ctx, const char* line) {
  Node* n = static_cast<Node*>(ctx->AllocZero(sizeof(Node)));
  const char* p = line;
  while (std::isalpha(static_cast<unsigned char>(*p))) ++p;
  n->key = Copy(ctx, line, p);
  if (std::strncmp(p, ": ", 2) != 0) return nullptr;
  n->number = std::strtol(p + 2, nullptr, 10);
  return n;
}

// Tries each rule from the same point; a failed attempt leaves nothing.
Node* ParseLine(mcx::Context* ctx, const char* line) {
  mcx::Mark before = ctx->Mark();
  for (auto rule : {ParseAssignment, ParseNumber}) {
    if (Node* n = rule(ctx, line)) {
      ctx->DropMark(before);  // keep it
      return n;
    }
    ctx->RewindTo(before);    // back out: everything since the mark goes
  }
  ctx->DropMark(before);
  return nullptr;
}
// [END parser]

}  // namespace

int main() {
  // [START use]
  mcx::Context* doc = mcx::Context::Create(nullptr, "document", mcx::PoolKind());
  std::vector<Node*> nodes;
  for (const char* line : {"name = mcx", "version: 2", "answer: 42"}) {
    nodes.push_back(ParseLine(doc, line));
  }
  CHECK(std::strcmp(nodes[0]->value, "mcx") == 0);
  CHECK(nodes[1]->number == 2 && std::strcmp(nodes[2]->key, "answer") == 0);
  // [END use]

  // [START cost]
  // A failed attempt costs nothing after its rewind: the context holds what
  // it held before the mark, block for block.
  const size_t blocks = doc->num_blocks();
  const size_t free_bytes = mcx::GetCounters(doc).free_bytes;
  mcx::Mark m = doc->Mark();
  const size_t free_at_mark = mcx::GetCounters(doc).free_bytes;
  for (int i = 0; i < 10000; ++i) ParseAssignment(doc, "key: not an assignment");
  CHECK(doc->num_blocks() > blocks);
  doc->RewindTo(m);
  CHECK(doc->num_blocks() == blocks);
  CHECK(mcx::GetCounters(doc).free_bytes == free_at_mark);
  CHECK(free_at_mark < free_bytes);  // the mark's own small record
  doc->DropMark(m);
  // [END cost]

  // [START undo]
  // Cleanups registered since the mark run, newest first, and children
  // created since are destroyed, in the order of a reset.
  std::string log;
  mcx::Mark attempt = doc->Mark();
  doc->AddCleanup([&log] { log += "close-file "; });
  mcx::Context* scratch = doc->CreateChild("scratch", mcx::PoolKind());
  scratch->AddCleanup([&log] { log += "scratch-gone "; });
  doc->RewindTo(attempt);
  CHECK(log == "scratch-gone close-file ");
  CHECK(doc->first_child() == nullptr);
  // ...or are dropped unrun, for cleanups that only matter if the work is kept.
  doc->AddCleanup([&log] { log += "commit "; });
  doc->RewindTo(attempt, mcx::RewindCleanups::kDrop);
  CHECK(log == "scratch-gone close-file ");
  // [END undo]

  // [START stack]
  // Marks nest: rewinding to an older one passes the newer ones, which are
  // then refused (through the failure path: Try returns the reason, the
  // throwing form throws std::invalid_argument).
  mcx::Mark inner = doc->Mark();
  doc->Alloc(100);
  doc->RewindTo(attempt);
  CHECK(doc->TryRewindTo(inner) == mcx::Failure::kStaleMark);
  bool threw = false;
  try {
    doc->RewindTo(inner);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  doc->DropMark(attempt);
  CHECK(doc->mark_depth() == 0);
  // [END stack]

  // [START refuse]
  // A kind that cannot rewind says so; the freelist kind frees chunk by
  // chunk instead.
  mcx::Context* cache = mcx::Context::Create(nullptr, "cache", mcx::FreelistKind());
  CHECK(!cache->TryMark());
  CHECK(cache->last_failure() == mcx::Failure::kUnsupported);
  // [END refuse]

  cache->Destroy();
  doc->Destroy();
  return 0;
}
