// Errors raised at engram's boundaries.
//
// Every error that bad input can cause is an engram::Error (or a subclass) whose message names
// the file, the field and the offending value, e.g.
//   data/tok/tokenizer.json: model.type: unsupported model "WordPiece" (expected "BPE")
// Inside the library invariants are asserted; input is never trusted.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace engram {

// Base class of every error engram throws on purpose.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A file could not be opened, read or written (the message includes strerror).
class IoError : public Error {
 public:
  using Error::Error;
};

// A file or document is malformed: invalid JSON, a missing or mistyped field, a bad value.
class FormatError : public Error {
 public:
  using Error::Error;
};

// A configuration whose values make no sense (e.g. max_ngram_size < 2).
class ConfigError : public Error {
 public:
  using Error::Error;
};

// Run-time input that violates a precondition: ids out of range, ragged rows, bad UTF-8.
class InputError : public Error {
 public:
  using Error::Error;
};

// "where: what" — the house format for error messages.
std::string error_message(std::string_view where, std::string_view what);

}  // namespace engram
