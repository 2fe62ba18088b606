// Private JSON helpers over nlohmann::json that turn every problem into a FormatError naming
// the file and the field path (e.g. "tok.json: model.merges[17]: expected a string").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "engram/util/error.h"

namespace engram::json {

using Json = nlohmann::json;

// Parses `text`; `source` names the file (or "<stdin>") for messages.
Json parse(std::string_view text, const std::string& source);

// A position in a document: the file and the path of the current value.
struct Where {
  std::string source;
  std::string path;  // "" for the root, else "a.b[3].c"

  Where field(std::string_view key) const;
  Where index(size_t i) const;
  [[noreturn]] void fail(std::string_view what) const;
  std::string str() const;
};

const char* type_name(const Json& j);

// Required field access: fails if missing or of the wrong type.
const Json& require(const Json& obj, std::string_view key, const Where& where);
const Json& require_object(const Json& j, const Where& where);
const Json& require_array(const Json& j, const Where& where);
std::string require_string(const Json& j, const Where& where);
int64_t require_int(const Json& j, const Where& where);
bool require_bool(const Json& j, const Where& where);

// Optional fields: nullptr when absent or null.
const Json* optional(const Json& obj, std::string_view key);

// A compact, short rendering of a value for messages (strings quoted, long values cut).
std::string brief(const Json& j);

}  // namespace engram::json
