#include "engram/util/error.h"

namespace engram {

std::string error_message(std::string_view where, std::string_view what) {
  std::string s;
  s.reserve(where.size() + what.size() + 2);
  s.append(where);
  s.append(": ");
  s.append(what);
  return s;
}

}  // namespace engram
