// Tutorial, part 5: cleanups. Two phases, newest first, children in between;
// removing and running a cleanup by its handle.

#include <string>

#include "docs/tutorial/check.h"
#include "mcx/context/context.h"
#include "mcx/pool/pool.h"

int main() {
  // [START order]
  std::string log;
  auto note = [&log](const char* what) { return [&log, what] { log += what; }; };
  mcx::Context* query = mcx::Context::Create(nullptr, "query", mcx::PoolKind());
  mcx::Context* row = query->CreateChild("row", mcx::PoolKind());
  query->AddCleanup(note("[close cursor]"), mcx::CleanupPhase::kBeforeChildren);
  query->AddCleanup(note("[unlock]"));          // kAfterChildren, the default
  query->AddCleanup(note("[log stats]"));
  row->AddCleanup(note("[row]"));
  query->Reset();
  CHECK(log == "[close cursor][row][log stats][unlock]");
  // [END order]

  // [START handles]
  log.clear();
  mcx::CleanupHandle temp = query->AddCleanup(note("[delete temp file]"));
  mcx::CleanupHandle flush = query->AddCleanup(note("[flush]"));
  query->RemoveCleanup(temp);                   // the file was renamed: no cleanup
  query->RunCleanup(flush);                     // run it now, and only now
  CHECK(log == "[flush]");
  query->Destroy();
  CHECK(log == "[flush]");                      // neither runs at teardown
  // [END handles]
  return 0;
}
