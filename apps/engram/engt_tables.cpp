// .engt tables on the command line (apps/engram/engt_tables.h).
#include "engt_tables.h"

#include <algorithm>
#include <cstring>
#include <cstdint>

#include "engram/memory/engt_file.h"
#include "engram/memory/row_format.h"
#include "engram/util/error.h"

namespace engram::cli {

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t comma = s.find(',', start);
    out.push_back(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::vector<int> check_engt_tables(const std::vector<std::string>& paths,
                                   const model::Transformer<float>& model) {
  const model::ModelConfig& config = model.config();
  const std::vector<int> ids = config.engram ? config.engram->hash.layer_ids : std::vector<int>{};
  if (paths.size() != ids.size()) {
    std::string list;
    for (const int l : ids) list += (list.empty() ? "" : ", ") + std::to_string(l);
    throw ConfigError(error_message(
        "--engram-tables", std::to_string(paths.size()) + " file(s) given, the model has " +
                               std::to_string(ids.size()) + " Engram layer(s) (layer_ids [" + list +
                               "]): one .engt file per layer, in that order"));
  }
  for (size_t e = 0; e < paths.size(); ++e) {
    const int layer = ids[e];
    const nn::EngramLayer<float>& el = *model.params().layers[static_cast<size_t>(layer)].engram;
    const memory::EngtFile header = memory::EngtFile::open(paths[e]);
    const auto check = [&](const char* field, int64_t value, int64_t expected) {
      if (value == expected) return;
      throw ConfigError(error_message(
          paths[e], std::string(field) + ": " + std::to_string(value) + ", but Engram layer " +
                        std::to_string(layer) + "'s table (param.layers." + std::to_string(layer) +
                        ".engram.table) has " + std::to_string(expected) + " " + field));
    };
    check("rows", header.rows(), el.table_rows());
    check("width", header.width(), el.config().row_width());
    // Tables of several Engram layers usually share their shape: a file converted from another
    // layer's tensor (its name says which) is refused rather than read in the wrong place.
    const std::string& name = header.name();
    const std::string mark = "layers.", tail = ".engram.table";
    const size_t at = name.rfind(mark);
    if (at != std::string::npos && name.size() > tail.size() &&
        name.compare(name.size() - tail.size(), tail.size(), tail) == 0) {
      const std::string number =
          name.substr(at + mark.size(), name.size() - tail.size() - at - mark.size());
      if (!number.empty() && number.find_first_not_of("0123456789") == std::string::npos &&
          number != std::to_string(layer)) {
        throw ConfigError(error_message(
            paths[e], "name: \"" + name + "\" is the table of layer " + number +
                          ", but this file is given for Engram layer " + std::to_string(layer) +
                          " (files in layer_ids order)"));
      }
    }
  }
  return ids;
}

void read_engt_rows(const std::string& path, float* out) {
  const memory::EngtFile file = memory::EngtFile::open(path);
  const int64_t width = file.width();
  file.for_each_group([&](int64_t first_row, int64_t count, const uint8_t* rows) {
    memory::decode_rows(file.format(), rows, count, width, out + first_row * width, width);
  });
}

void read_engt_encoded_rows(const std::string& path, uint8_t* out) {
  const memory::EngtFile file = memory::EngtFile::open(path);
  const int64_t row_bytes = file.row_bytes();
  file.for_each_group([&](int64_t first_row, int64_t count, const uint8_t* rows) {
    std::memcpy(out + first_row * row_bytes, rows, static_cast<size_t>(count * row_bytes));
  });
}

void load_engt_tables(const std::vector<std::string>& paths, model::Transformer<float>& model) {
  const std::vector<int> ids = check_engt_tables(paths, model);
  for (size_t e = 0; e < paths.size(); ++e) {
    const auto l = static_cast<size_t>(ids[e]);
    std::vector<float>& table = model.params().layers[l].engram_table;
    const memory::EngtFile file = memory::EngtFile::open(paths[e]);
    const int64_t rows = file.rows(), width = file.width();
    if (static_cast<int64_t>(table.size()) != rows * width) {
      throw ConfigError(error_message(
          paths[e], "the model's table param.layers." + std::to_string(ids[e]) +
                        ".engram.table is not loaded (" + std::to_string(table.size()) +
                        " values for " + std::to_string(rows * width) + ")"));
    }
    read_engt_rows(paths[e], table.data());
  }
}

}  // namespace engram::cli
