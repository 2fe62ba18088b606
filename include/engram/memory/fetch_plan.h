// What one step reads from the Engram tables, known before the model runs: hashing needs only
// token ids, so every layer's rows can be deduplicated, ordered and fetched ahead.
//
// Input: for each Engram layer (layer_ids order, as NgramHasher::hash_all_layers writes them) the
// per-head ids of every token, (num_layers, tokens, heads); a head's row in the layer's table is
// head_offsets[layer][head] + id (NgramHasher::head_offsets). Each layer has its own table, so rows
// are deduplicated per layer:
//   rows[l]      the layer's unique rows, ascending (file order: neighbours share 4 KiB blocks)
//   requests[l]  how many (token, head) reads each unique row serves
//   index[l]     (tokens, heads): for every read, the position of its row in rows[l] (the gather
//                map from fetched rows back to the layer's input)
// and the combined plan lists every layer's rows in the order the model consumes the layers
// (ascending layer id: the first Engram layer's rows first), which is the prefetch order.
// Deterministic: the same ids give the same plan.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace engram::memory {

// One layer's rows for a step.
struct LayerFetch {
  int layer_id = 0;
  std::vector<int64_t> rows;      // unique, ascending
  std::vector<int32_t> requests;  // requests[i]: reads of rows[i]
  std::vector<int32_t> index;     // (tokens, heads): rows[index[t * heads + h]] is read t, h's row
};

// A row of the combined plan: `row` of the table of layers()[layer].
struct FetchItem {
  int32_t layer;  // position in layers() (layer_ids order)
  int64_t row;
};

struct FetchStats {
  int64_t requested = 0;  // (token, head) reads, all layers
  int64_t unique = 0;     // rows to fetch after per-layer deduplication
  int64_t duplicates_removed() const { return requested - unique; }
  int64_t requested_bytes(int64_t row_bytes) const { return requested * row_bytes; }
  int64_t unique_bytes(int64_t row_bytes) const { return unique * row_bytes; }
};

class FetchPlan {
 public:
  // ids: (layer_ids.size(), tokens, heads) per-head ids (int32, as the hasher writes them);
  // head_offsets[l]: `heads` row offsets of layer l. Throws InputError when the shapes disagree,
  // an id is negative, or a row would overflow int64; ConfigError for repeated layer ids.
  static FetchPlan build(std::span<const int32_t> ids, size_t tokens,
                         const std::vector<int>& layer_ids,
                         const std::vector<std::vector<int64_t>>& head_offsets);
  // Same from table rows already offset: rows is (layer_ids.size(), tokens, heads), rows ≥ 0.
  static FetchPlan build_from_rows(std::span<const int64_t> rows, size_t tokens, size_t heads,
                                   const std::vector<int>& layer_ids);

  size_t tokens() const { return tokens_; }
  size_t heads() const { return heads_; }
  const std::vector<LayerFetch>& layers() const { return layers_; }
  // Every layer's unique rows, layers by ascending layer id, rows ascending within a layer.
  std::vector<FetchItem> combined() const;
  // Positions in layers() by ascending layer id (the consumption order).
  const std::vector<int32_t>& consumption_order() const { return order_; }
  FetchStats stats() const;

 private:
  size_t tokens_ = 0, heads_ = 0;
  std::vector<LayerFetch> layers_;
  std::vector<int32_t> order_;
};

// The table file's block geometry (as .engt lays it out): rows never straddle a 4096-byte block;
// either rows_per_block rows share one block (row_bytes ≤ 4096) or a row takes blocks_per_row
// whole blocks (one of the two is 1). Blocks are counted from the first data block.
struct BlockGeometry {
  int64_t rows_per_block = 1;
  int64_t blocks_per_row = 1;
};

// One read: blocks [first_block, first_block + num_blocks) hold rows[first, first + count) of
// the input.
struct BlockRead {
  int64_t first_block;
  int64_t num_blocks;
  int64_t first;
  int64_t count;
};

// Groups strictly ascending rows by block, so each block is read once: one BlockRead per block
// (per row when blocks_per_row > 1). Throws InputError for rows that are negative or not strictly
// ascending, ConfigError for a geometry with a value < 1 or both values > 1.
std::vector<BlockRead> group_by_block(std::span<const int64_t> rows, BlockGeometry geometry);

}  // namespace engram::memory
