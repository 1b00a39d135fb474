// Tutorial, part 12: handle pools. Objects named by handles (an index and a
// version) instead of pointers: a stale handle is detected, never answered
// with another object's memory.
//
// With `--dot DIR` it also writes DIR/handle-pool.dot, the level's context
// drawn with its blocks (docs/pictures/render.sh).

#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "docs/tutorial/check.h"
#include "mcx/context/context.h"
#include "mcx/context/dot.h"
#include "mcx/freelist/freelist.h"
#include "mcx/handle/handle_pool.h"

namespace {

// [START entity]
struct Entity {
  float x, y;
  int hit_points;
  char name[20];
};

// A game level: its entities live in a handle pool in the level's context.
mcx::HandlePool* MakeEntities(mcx::Context* level) {
  mcx::HandlePoolOptions options;
  options.AddClass(sizeof(Entity), 64, /*grow=*/64);  // 64 slots, then 64 more at a time
  options.AddClass(256, 8);                            // a few larger objects
  return mcx::HandlePool::Create(level, options);
}
// [END entity]

mcx::Handle Spawn(mcx::HandlePool* entities, const char* name) {
  mcx::Handle h = entities->Allocate(sizeof(Entity));
  Entity* e = new (entities->Get(h)) Entity{0, 0, 100, {}};
  std::snprintf(e->name, sizeof(e->name), "%s", name);
  return h;
}

void WriteDot(const char* dir, mcx::Context* root) {
  mcx::DotOptions o;
  o.blocks = true;
  const std::string path = std::string(dir) + "/handle-pool.dot";
  std::FILE* f = std::fopen(path.c_str(), "w");
  CHECK(f != nullptr);
  std::fputs(mcx::DotReport(root, o).c_str(), f);
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  const char* dot_dir = argc == 3 && std::strcmp(argv[1], "--dot") == 0 ? argv[2] : nullptr;
  mcx::Context* game = mcx::Context::Create(nullptr, "game", mcx::FreelistKind());
  mcx::Context* level = game->CreateChild("level", mcx::FreelistKind());
  mcx::HandlePool* entities = MakeEntities(level);

  // [START stale]
  mcx::Handle orc = Spawn(entities, "orc");
  mcx::Handle target = orc;                    // the archer aims at the orc
  entities->Get<Entity>(orc)->hit_points -= 30;
  entities->Free(orc);                         // the orc dies
  mcx::Handle wolf = Spawn(entities, "wolf");  // and a wolf takes its slot
  CHECK(wolf.index() == target.index());       // the same slot...
  CHECK(wolf.version() == target.version() + 1);  // ...at its next version
  CHECK(entities->Get(target) == nullptr);     // the archer's target is gone, not a wolf
  CHECK(!entities->Free(target));              // freeing it again does nothing
  CHECK(std::strcmp(entities->Get<Entity>(wolf)->name, "wolf") == 0);
  // [END stale]

  // [START classes]
  std::vector<mcx::Handle> horde;
  for (int i = 0; i < 200; ++i) horde.push_back(Spawn(entities, "goblin"));
  CHECK(entities->GetStats().classes[0].slots == 256);  // grew three times, by 64
  mcx::Handle boss = entities->Allocate(200);           // only the larger class holds it
  CHECK(boss.size_class() == 1);
  CHECK(!entities->Allocate(1000));                     // no class holds 1000 bytes
  CHECK(entities->last_failure() == mcx::Failure::kBadSize);
  // [END classes]

  // [START foreach]
  int alive = 0;
  entities->ForEach([&](mcx::Handle h, void* slot) {
    if (h.size_class() != 0) return;  // entities only
    Entity* e = static_cast<Entity*>(slot);
    e->x += 1.0f;
    ++alive;
  });
  CHECK(alive == 201);  // the wolf and the horde
  // [END foreach]

  if (dot_dir != nullptr) WriteDot(dot_dir, game);

  // [START reset]
  level->Reset();                  // the next level: every entity and the pool go
  entities = MakeEntities(level);  // a new pool, likely at the same address
  mcx::Handle ghost = wolf;        // kept by some system across the reset
  CHECK(entities->Get(ghost) == nullptr);
  mcx::Handle knight = Spawn(entities, "knight");
  CHECK(entities->Get(knight) != nullptr && entities->Get(ghost) == nullptr);
  // [END reset]

  game->Destroy();
  return 0;
}
