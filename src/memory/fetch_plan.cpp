#include "engram/memory/fetch_plan.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <string>
#include <utility>

#include "engram/util/error.h"

namespace engram::memory {
namespace {

[[noreturn]] void fail(const char* where, const std::string& what) {
  throw InputError(error_message(where, what));
}

// Deduplicates one layer's reads (tokens × heads rows) into `out`.
void dedup_layer(std::span<const int64_t> rows, LayerFetch& out,
                 std::vector<std::pair<int64_t, int32_t>>& scratch) {
  scratch.resize(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) scratch[i] = {rows[i], static_cast<int32_t>(i)};
  std::sort(scratch.begin(), scratch.end());
  out.rows.clear();
  out.requests.clear();
  out.index.assign(rows.size(), 0);
  for (const auto& [row, pos] : scratch) {
    if (out.rows.empty() || out.rows.back() != row) {
      out.rows.push_back(row);
      out.requests.push_back(0);
    }
    ++out.requests.back();
    out.index[static_cast<size_t>(pos)] = static_cast<int32_t>(out.rows.size() - 1);
  }
}

std::vector<int32_t> layers_by_id(const std::vector<int>& layer_ids) {
  std::vector<int32_t> order(layer_ids.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return layer_ids[a] < layer_ids[b]; });
  for (size_t i = 1; i < order.size(); ++i) {
    if (layer_ids[order[i]] == layer_ids[order[i - 1]]) {
      throw ConfigError(error_message(
          "FetchPlan", "layer id " + std::to_string(layer_ids[order[i]]) + " appears twice"));
    }
  }
  return order;
}

}  // namespace

FetchPlan FetchPlan::build(std::span<const int32_t> ids, size_t tokens,
                           const std::vector<int>& layer_ids,
                           const std::vector<std::vector<int64_t>>& head_offsets) {
  constexpr const char* kWhere = "FetchPlan::build";
  if (head_offsets.size() != layer_ids.size()) {
    fail(kWhere, "head_offsets has " + std::to_string(head_offsets.size()) + " layers, layer_ids " +
                     std::to_string(layer_ids.size()));
  }
  const size_t heads = head_offsets.empty() ? 0 : head_offsets[0].size();
  for (size_t l = 0; l < head_offsets.size(); ++l) {
    if (head_offsets[l].size() != heads) {
      fail(kWhere, "head_offsets[" + std::to_string(l) + "] has " +
                       std::to_string(head_offsets[l].size()) + " heads, head_offsets[0] " +
                       std::to_string(heads));
    }
    for (size_t h = 0; h < heads; ++h) {
      if (head_offsets[l][h] < 0) {
        fail(kWhere, "head_offsets[" + std::to_string(l) + "][" + std::to_string(h) +
                         "] = " + std::to_string(head_offsets[l][h]) + " is negative");
      }
    }
  }
  if (ids.size() != layer_ids.size() * tokens * heads) {
    fail(kWhere,
         "ids has " + std::to_string(ids.size()) +
             " values, expected layers × tokens × heads = " + std::to_string(layer_ids.size()) +
             " × " + std::to_string(tokens) + " × " + std::to_string(heads));
  }
  std::vector<int64_t> rows(ids.size());
  const size_t per_layer = tokens * heads;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    const int64_t offset = head_offsets[i / std::max<size_t>(per_layer, 1)][i % heads];
    if (id < 0) {
      fail(kWhere, "ids[" + std::to_string(i) + "] = " + std::to_string(id) + " is negative");
    }
    if (offset > std::numeric_limits<int64_t>::max() - id) {
      fail(kWhere, "ids[" + std::to_string(i) + "] + its head offset overflows int64");
    }
    rows[i] = offset + id;
  }
  return build_from_rows(rows, tokens, heads, layer_ids);
}

FetchPlan FetchPlan::build_from_rows(std::span<const int64_t> rows, size_t tokens, size_t heads,
                                     const std::vector<int>& layer_ids) {
  constexpr const char* kWhere = "FetchPlan::build_from_rows";
  if (rows.size() != layer_ids.size() * tokens * heads) {
    fail(kWhere,
         "rows has " + std::to_string(rows.size()) +
             " values, expected layers × tokens × heads = " + std::to_string(layer_ids.size()) +
             " × " + std::to_string(tokens) + " × " + std::to_string(heads));
  }
  if (tokens * heads > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    fail(kWhere, std::to_string(tokens * heads) + " reads per layer exceed int32");
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] < 0) {
      fail(kWhere, "rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) + " is negative");
    }
  }
  FetchPlan plan;
  plan.tokens_ = tokens;
  plan.heads_ = heads;
  plan.order_ = layers_by_id(layer_ids);
  plan.layers_.resize(layer_ids.size());
  std::vector<std::pair<int64_t, int32_t>> scratch;
  const size_t per_layer = tokens * heads;
  for (size_t l = 0; l < layer_ids.size(); ++l) {
    plan.layers_[l].layer_id = layer_ids[l];
    dedup_layer(rows.subspan(l * per_layer, per_layer), plan.layers_[l], scratch);
  }
  return plan;
}

std::vector<FetchItem> FetchPlan::combined() const {
  std::vector<FetchItem> out;
  out.reserve(static_cast<size_t>(stats().unique));
  for (int32_t l : order_) {
    for (int64_t row : layers_[static_cast<size_t>(l)].rows) out.push_back({l, row});
  }
  return out;
}

FetchStats FetchPlan::stats() const {
  FetchStats s;
  for (const LayerFetch& l : layers_) {
    s.requested += static_cast<int64_t>(l.index.size());
    s.unique += static_cast<int64_t>(l.rows.size());
  }
  return s;
}

std::vector<BlockRead> group_by_block(std::span<const int64_t> rows, BlockGeometry g) {
  if (g.rows_per_block < 1 || g.blocks_per_row < 1 ||
      (g.rows_per_block > 1 && g.blocks_per_row > 1)) {
    throw ConfigError(error_message("group_by_block",
                                    "rows_per_block = " + std::to_string(g.rows_per_block) +
                                        ", blocks_per_row = " + std::to_string(g.blocks_per_row) +
                                        ": both must be ≥ 1 and at least one of them 1"));
  }
  std::vector<BlockRead> out;
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t r = rows[i];
    if (r < 0 || (i > 0 && r <= rows[i - 1])) {
      fail("group_by_block", "rows[" + std::to_string(i) + "] = " + std::to_string(r) +
                                 (r < 0 ? " is negative" : " is not above the row before it"));
    }
    const int64_t block = r / g.rows_per_block * g.blocks_per_row;
    if (!out.empty() && out.back().first_block == block) {
      ++out.back().count;
    } else {
      out.push_back({block, g.blocks_per_row, static_cast<int64_t>(i), 1});
    }
  }
  return out;
}

}  // namespace engram::memory
