// The pre-tokenizer of a byte-level BPE tokenizer: splits normalized text into pieces that the
// BPE model encodes independently (Hugging Face semantics).
//
// Supported steps (tokenizer.json "pre_tokenizer"): Sequence, Split (String or Regex pattern,
// every SplitDelimiterBehavior, invert), Digits, and ByteLevel (add_prefix_space, use_regex),
// which must come last: its byte-to-character mapping is applied inside the BPE model.
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "text/split_matcher.h"

namespace engram::text {

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
  enum class Kind { kSplit, kPrefixSpace };
  Kind kind = Kind::kSplit;
  std::unique_ptr<SplitMatcher> matcher;            // kSplit
  std::unique_ptr<SplitMatcher> reference_matcher;  // kSplit: the regex, when `matcher` is fast
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
};

// Pieces of text: views into the input or into `arena` (pieces that were changed, e.g. given a
// prefix space).
struct Pieces {
  std::vector<std::string_view> items;
  std::deque<std::string> arena;
  void clear() {
    items.clear();
    arena.clear();
  }
};

class PreTokenizer {
 public:
  PreTokenizer() = default;
  explicit PreTokenizer(std::vector<PreTokenizerStep> steps) : steps_(std::move(steps)) {}

  // Appends the pieces of `text` to out.items (pieces are never empty).
  void split(std::string_view text, Pieces& out) const;

  // Use the regex for every Split step, ignoring the hand-written matchers (for tests).
  void set_reference_only(bool on) { reference_only_ = on; }
  // Human-readable list of the matchers in use, e.g. "fast:\p{N}{1,3}, icu-regex".
  std::string describe() const;

 private:
  std::vector<PreTokenizerStep> steps_;
  bool reference_only_ = false;
};

// Splits one piece by the matches of `matcher` with the given behaviour; appends the parts.
void split_piece(std::string_view piece, const SplitMatcher& matcher, SplitBehavior behavior,
                 bool invert, std::vector<std::string_view>& out);

}  // namespace engram::text
