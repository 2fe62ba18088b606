// error_of<E>(f): the message of the E that f() throws, or "(no error)" when it throws none (any
// other exception propagates and fails the test). For tests that check what an error says.
#pragma once

#include <string>

namespace engram::test {

template <class E, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace engram::test
