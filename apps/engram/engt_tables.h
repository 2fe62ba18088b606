// The Engram tables of a model given as .engt files on the command line (engram generate and
// engram eval --engram-tables F.engt[,F.engt...]): one file per Engram layer, in layer_ids order.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engram/model/transformer.h"
#include "engram/tensor/dtype.h"

namespace engram::cli {

// "a,b,c" -> {"a", "b", "c"} (an empty string gives {""}).
std::vector<std::string> split_commas(const std::string& s);

// Checks that there is one path per Engram layer of `model` and that each file's header has
// that layer's table rows and row width, and, when the header's tensor name is a layer's table
// ("...layers.N.engram.table", as `engram table convert` records it), that N is this layer;
// throws ConfigError naming the flag or the file, the field and both values. Returns the Engram
// layer ids, in the order of the paths.
std::vector<int> check_engt_tables(const std::vector<std::string>& paths,
                                   const model::Transformer<float>& model);

// Every row of an .engt file, decoded (what a RowStore over the file returns), into out
// (rows x width values): one block group at a time, each checked against its checksum.
void read_engt_rows(const std::string& path, float* out);
// Every row of an .engt file as stored (rows x row_bytes bytes, the file's row format), each
// block checked against its checksum: what the GPU's gather dequantizes (cuda::DeviceTable).
void read_engt_encoded_rows(const std::string& path, uint8_t* out);

// Replaces the model's Engram tables by the rows of the .engt files (decoded to float: exactly
// what a RowStore over the file returns), after check_engt_tables. The tables must be allocated
// (a model loaded with its tables).
void load_engt_tables(const std::vector<std::string>& paths, model::Transformer<float>& model);

}  // namespace engram::cli
