#include "util/json.h"

#include <string>

namespace engram::json {

Json parse(std::string_view text, const std::string& source) {
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::parse_error& e) {
    // nlohmann's message already carries the byte offset ("at line 3, column 7").
    std::string what = e.what();
    const auto pos = what.find("parse error");
    throw FormatError(error_message(
        source, "invalid JSON: " + (pos == std::string::npos ? what : what.substr(pos))));
  }
}

Where Where::field(std::string_view key) const {
  Where w{source, path};
  if (!w.path.empty()) w.path += '.';
  w.path.append(key);
  return w;
}

Where Where::index(size_t i) const {
  Where w{source, path};
  w.path += '[';
  w.path += std::to_string(i);
  w.path += ']';
  return w;
}

std::string Where::str() const {
  return path.empty() ? source : source + ": " + path;
}

void Where::fail(std::string_view what) const {
  throw FormatError(error_message(str(), what));
}

const char* type_name(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::object:
      return "an object";
    case Json::value_t::array:
      return "an array";
    case Json::value_t::string:
      return "a string";
    case Json::value_t::boolean:
      return "a boolean";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return "an integer";
    case Json::value_t::number_float:
      return "a number";
    default:
      return "an unsupported value";
  }
}

std::string brief(const Json& j) {
  std::string s = j.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

const Json& require_object(const Json& j, const Where& where) {
  if (!j.is_object()) where.fail(std::string("expected an object, found ") + type_name(j));
  return j;
}

const Json& require_array(const Json& j, const Where& where) {
  if (!j.is_array()) where.fail(std::string("expected an array, found ") + type_name(j));
  return j;
}

const Json& require(const Json& obj, std::string_view key, const Where& where) {
  require_object(obj, where);
  auto it = obj.find(key);
  if (it == obj.end()) where.fail("missing field \"" + std::string(key) + "\"");
  return *it;
}

const Json* optional(const Json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string require_string(const Json& j, const Where& where) {
  if (!j.is_string())
    where.fail(std::string("expected a string, found ") + type_name(j) + " " + brief(j));
  return j.get<std::string>();
}

int64_t require_int(const Json& j, const Where& where) {
  if (j.is_number_integer()) {
    if (j.is_number_unsigned() && j.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      where.fail("integer " + brief(j) + " is out of range");
    }
    return j.get<int64_t>();
  }
  if (j.is_number_float()) {
    const double d = j.get<double>();
    if (d == static_cast<double>(static_cast<int64_t>(d)) && d > -9.2e18 && d < 9.2e18) {
      return static_cast<int64_t>(d);
    }
  }
  where.fail(std::string("expected an integer, found ") + type_name(j) + " " + brief(j));
}

bool require_bool(const Json& j, const Where& where) {
  if (!j.is_boolean())
    where.fail(std::string("expected true or false, found ") + type_name(j) + " " + brief(j));
  return j.get<bool>();
}

}  // namespace engram::json
