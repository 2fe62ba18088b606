#include "test_paths.h"

#include <sys/stat.h>

#include <cstdlib>
#include <stdexcept>

namespace engram::test {
namespace {

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? std::string(v) : std::string(fallback);
}

}  // namespace

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::string require_path(const std::string& path, const char* how_to_get) {
  if (!path_exists(path))
    throw std::runtime_error("test input missing: " + path + " (" + how_to_get + ")");
  return path;
}

std::string golden_dir() {
  return require_path(env_or("ENGRAM_GOLDEN_DIR", ENGRAM_GOLDEN_DIR_DEFAULT),
                      "the golden files live in ../shared/golden beside the checkout");
}

std::string data_dir() {
  return require_path(env_or("ENGRAM_DATA_DIR", ENGRAM_DATA_DIR_DEFAULT), "run scripts/setup.sh");
}

std::string tokenizer_dir() {
  return require_path(data_dir() + "/tokenizers/deepseek-v3", "run scripts/setup.sh");
}

std::string fixture_dir() {
  return std::string(ENGRAM_SOURCE_DIR) + "/tests/fixtures";
}

std::string cli_path() {
  return ENGRAM_CLI_PATH;
}

}  // namespace engram::test
