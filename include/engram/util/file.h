// Whole-file reads and crash-safe whole-file writes.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace engram {

// Reads the whole file into a string. Throws IoError naming the path on failure.
std::string read_file(const std::string& path);

// Writes `bytes` to `path` atomically: a temporary file beside it is written, fsynced and
// renamed over `path`, then the directory is fsynced. Readers see the old or the new file,
// never a partial one. Throws IoError (and removes the temporary file) on failure.
void write_file_atomic(const std::string& path, std::string_view bytes);

}  // namespace engram
