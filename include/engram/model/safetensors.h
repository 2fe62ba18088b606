// safetensors files: a little-endian u64 header length, a JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {"key": "value"}}, then the tensor bytes.
//
// Reading memory-maps the file and validates the header strictly before any tensor is touched:
// header length at most 100 MiB and inside the file, valid UTF-8 JSON object without duplicate
// keys, entries with exactly dtype/shape/data_offsets, known dtypes, non-negative integer shapes
// whose element count does not overflow, offsets inside the data area, shape x dtype = byte
// length, and (as the reference library requires) tensors that tile the data area exactly: no
// overlap, no gap. A truncated or hostile file gives a FormatError naming the file and the
// tensor/field, never an over-read or a crash. (A file truncated by someone else while mapped
// can still raise SIGBUS on access; nothing can guard against that but copying.)
//
// Writing goes to a temporary file beside the target, which is fsynced and renamed: readers see
// the old file or the new one, never a partial one. The header is compact JSON in the given
// order, "__metadata__" first when there is any, padded with spaces to a multiple of 8 bytes as
// the reference library pads it.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engram/tensor/tensor.h"

namespace engram {

class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws IoError (cannot open/map, not a regular file) or
  // FormatError.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  // Tensor names in file order (sorted by data offset; empty tensors sharing an offset by name).
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  // A zero-copy view of a tensor, contiguous; the view keeps the mapping alive by itself. The
  // mapping is read-only: writing through the view faults, so copy (contiguous()) to modify.
  // A tensor whose bytes are misaligned for its dtype (possible, since tensors are packed
  // without padding) is handed out as an aligned copy made at open(), never as a view.
  // Throws FormatError naming the file if the tensor is absent.
  Tensor get(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  std::vector<std::string> names_;
  std::map<std::string, size_t> index_;
  std::vector<Tensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Writes tensors (in the given order, packed without gaps) and metadata atomically. Tensors may
// be non-contiguous views of any dtype; they are streamed to the file one at a time. Names must
// be unique, non-empty, not "__metadata__" and valid UTF-8, which is checked before anything is
// written (InputError). Throws IoError when the file cannot be written; then the temporary file
// is removed and any old file at `path` is untouched.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace engram
