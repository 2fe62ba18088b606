#include "engram/text/compressor.h"

#include <unordered_map>

#include "engram/text/normalizer.h"
#include "engram/text/utf8.h"
#include "engram/util/error.h"
#include "engram/util/parallel.h"

namespace engram::text {

CompressionTable CompressionTable::build(const Tokenizer& tokenizer, int threads) {
  const size_t n = tokenizer.vocab_size();
  const Normalizer normalizer = Normalizer::engram_compression();
  std::vector<std::string> id_keys(n);
  CompressionTable table;
  table.fallback.assign(n, 0);
  parallel_for(n, threads, 1024, [&](size_t begin, size_t end) {
    for (size_t id = begin; id < end; ++id) {
      const auto token = tokenizer.id_to_token(static_cast<uint32_t>(id));
      if (!token) continue;  // an id with no token decodes to "", whose key is ""
      const uint32_t one = static_cast<uint32_t>(id);
      const std::string text = tokenizer.decode(std::span<const uint32_t>(&one, 1));
      if (text.find("\xEF\xBF\xBD") != std::string::npos) {
        id_keys[id] = *token;
        table.fallback[id] = 1;
      } else {
        std::string key = normalizer.normalize(text);
        id_keys[id] = key.empty() ? text : std::move(key);
      }
    }
  });
  std::unordered_map<std::string, int32_t> key_to_new;
  key_to_new.reserve(n);
  table.lut.resize(n);
  for (size_t id = 0; id < n; ++id) {
    auto [it, inserted] =
        key_to_new.try_emplace(id_keys[id], static_cast<int32_t>(table.keys.size()));
    if (inserted) table.keys.push_back(id_keys[id]);
    table.lut[id] = it->second;
  }
  return table;
}

double CompressionTable::reduction() const {
  return lut.empty() ? 0.0
                     : 1.0 - static_cast<double>(keys.size()) / static_cast<double>(lut.size());
}

std::vector<int64_t> CompressionTable::apply(std::span<const int64_t> ids) const {
  std::vector<int64_t> out(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids[i];
    if (id >= vocab_size()) {
      throw InputError(error_message(
          "compress", "id " + std::to_string(id) + " at position " + std::to_string(i) +
                          " is outside the vocabulary [0, " + std::to_string(vocab_size()) + ")"));
    }
    out[i] = id < 0 ? id : lut[static_cast<size_t>(id)];
  }
  return out;
}

}  // namespace engram::text
