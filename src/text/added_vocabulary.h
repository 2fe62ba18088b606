// Added tokens (tokenizer.json "added_tokens"): matched in the text before pre-tokenization,
// leftmost-longest, with single_word / lstrip / rstrip handled as Hugging Face does.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engram/text/tokenizer.h"

namespace engram::text {

// A piece of the input: an added token (id >= 0) or text to pre-tokenize (id < 0).
struct Segment {
  size_t begin, end;
  int64_t id;
};

// Leftmost-longest matcher over a set of literal strings (a byte trie).
class AddedTokenMatcher {
 public:
  // patterns[k] is matched as token tokens[k]; empty patterns are ignored.
  AddedTokenMatcher(const std::vector<std::string>& patterns,
                    const std::vector<const AddedToken*>& tokens);

  bool empty() const { return nodes_.size() <= 1; }
  // Splits `text` into segments (covering it; empty gaps omitted).
  void split(std::string_view text, std::vector<Segment>& out) const;

 private:
  struct Node {
    std::vector<std::pair<uint8_t, uint32_t>> children;  // sorted by byte
    int32_t token = -1;  // index into tokens_ if a pattern ends here
  };
  uint32_t child(uint32_t node, uint8_t b) const;
  std::vector<Node> nodes_;
  std::vector<const AddedToken*> tokens_;
  bool first_byte_[256] = {};
  int single_first_byte_ = -1;  // the only first byte of all patterns, or -1
};

}  // namespace engram::text
