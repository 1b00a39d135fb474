#include "mcx/testing/inspect_check.h"

#include <algorithm>
#include <cstddef>
#include <functional>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/inspect.h"
#include "mcx/context/stats.h"

namespace mcx {
namespace test {

bool ExpectInspectAddsUp(const Context* ctx) {
  const ContextLayout layout = InspectContext(ctx);
  if (!layout.has_detail) return false;
  SCOPED_TRACE(testing::Message() << "inspect of " << ctx->kind_name() << " context '"
                                  << ctx->name() << "'");
  EXPECT_STREQ(layout.kind, ctx->kind_name());
  EXPECT_EQ(layout.blocks.size(), ctx->num_blocks()) << "blocks listed, blocks held";
  if (layout.blocks.empty()) return true;

  const BlockInfo& first = layout.blocks.front();
  EXPECT_EQ(first.role, BlockRole::kFirst) << "the first block comes first";
  EXPECT_EQ(first.start, static_cast<const void*>(ctx)) << "the first block holds the context";
  EXPECT_EQ(first.size, ctx->first_block_size());
  size_t total = 0;
  size_t free = 0;
  size_t block_free_chunks = 0;
  for (size_t i = 0; i < layout.blocks.size(); ++i) {
    const BlockInfo& b = layout.blocks[i];
    SCOPED_TRACE(testing::Message() << "block " << i << " (" << b.Name() << ", "
                                    << b.size << " bytes at " << b.start << ")");
    if (i != 0) {
      EXPECT_NE(b.role, BlockRole::kFirst) << "a second first block";
    }
    EXPECT_EQ(b.header_bytes + b.used_bytes + b.free_bytes + b.freelist_bytes, b.size)
        << "header " << b.header_bytes << " + used " << b.used_bytes << " + free "
        << b.free_bytes << " + freelist " << b.freelist_bytes;
    EXPECT_LE(b.last_offset, b.end_offset);
    EXPECT_LE(b.end_offset, b.size);
    EXPECT_EQ(b.free_bytes, b.end_offset - b.last_offset) << "free bytes are [last, end)";
    EXPECT_EQ(b.freelist_bytes == 0, b.freelist_chunks == 0);
    total += b.size;
    free += b.free_bytes + b.freelist_bytes;
    block_free_chunks += b.freelist_chunks;
  }
  std::vector<const BlockInfo*> by_address;
  for (const BlockInfo& b : layout.blocks) by_address.push_back(&b);
  std::sort(by_address.begin(), by_address.end(),
            [](const BlockInfo* x, const BlockInfo* y) { return std::less<const void*>()(x->start, y->start); });
  for (size_t i = 1; i < by_address.size(); ++i) {
    const char* end = static_cast<const char*>(by_address[i - 1]->start) + by_address[i - 1]->size;
    EXPECT_LE(end, static_cast<const char*>(by_address[i]->start))
        << "blocks at " << by_address[i - 1]->start << " and " << by_address[i]->start
        << " overlap";
  }

  const ContextCounters counters = GetCounters(ctx);
  EXPECT_EQ(total, ctx->bytes_in_blocks()) << "the blocks' sizes add up to bytes_in_blocks()";
  EXPECT_EQ(free, counters.free_bytes) << "free and freelist bytes are GetCounters' free bytes";
  EXPECT_EQ(block_free_chunks, counters.free_chunks);
  if (!layout.size_classes.empty()) {
    size_t class_free_chunks = 0;
    for (const SizeClassLayout& c : layout.size_classes) {
      SCOPED_TRACE(testing::Message() << "size class " << c.info.index);
      EXPECT_EQ(c.free_list.size(), c.info.free_chunks);
      EXPECT_LE(c.info.class_bytes, c.info.chunk_bytes);
      for (const void* p : c.free_list) {
        EXPECT_NE(layout.BlockContaining(p), nullptr) << "free chunk " << p << " in no block";
      }
      class_free_chunks += c.info.free_chunks;
    }
    EXPECT_EQ(class_free_chunks, block_free_chunks) << "free chunks by class and by block";
  }
  return true;
}

}  // namespace test
}  // namespace mcx
