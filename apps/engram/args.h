// Minimal command-line parsing for the engram subcommands.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace engram::cli {

// A usage error: printed with the subcommand's help, exit status 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Args {
 public:
  // Parses argv[first..]: "--name value" options (names in `with_value`), "--flag" switches
  // (names in `flags`) and positional arguments. Unknown options are a UsageError.
  Args(int argc, char** argv, int first, const std::set<std::string>& with_value,
       const std::set<std::string>& flags);

  bool has(const std::string& name) const { return values_.count(name) || flags_.count(name); }
  std::string required(const std::string& name) const;
  std::optional<std::string> optional(const std::string& name) const;
  int64_t integer(const std::string& name, int64_t fallback, int64_t min, int64_t max) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::string> values_;
  std::set<std::string> flags_;
  std::vector<std::string> positional_;
};

}  // namespace engram::cli
