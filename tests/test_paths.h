// Locations of test inputs. Missing inputs fail the test with a message saying how to get them
// (they are never silently skipped: CI always has them).
#pragma once

#include <string>

namespace engram::test {

// ../shared/golden (or $ENGRAM_GOLDEN_DIR).
std::string golden_dir();
// data/ (or $ENGRAM_DATA_DIR), filled by scripts/setup.sh.
std::string data_dir();
// data/tokenizers/deepseek-v3 (holds tokenizer.json).
std::string tokenizer_dir();
// tests/fixtures.
std::string fixture_dir();
// The engram CLI binary.
std::string cli_path();

// Throws (failing the test) if the path does not exist.
std::string require_path(const std::string& path, const char* how_to_get);

bool path_exists(const std::string& path);

}  // namespace engram::test
