#include "text/pretokenizer.h"

#include <algorithm>
#include <utility>

namespace engram::text {
namespace {

struct Part {
  size_t begin, end;
  bool flag;  // is_match, then (after the behaviour) "remove"
};

}  // namespace

void split_piece(std::string_view piece, const SplitMatcher& matcher, SplitBehavior behavior,
                 bool invert, std::vector<std::string_view>& out) {
  thread_local std::vector<Span> spans;
  thread_local std::vector<Part> parts, merged;
  // The pieces covering the whole string, alternating gaps and matches (tokenizers'
  // Pattern::find_matches); empty matches are kept here and dropped at the end.
  parts.clear();
  if (piece.empty()) {
    parts.push_back({0, 0, false});
  } else {
    matcher.find_all(piece, spans);
    size_t prev = 0;
    for (const auto& [b, e] : spans) {
      if (prev != b) parts.push_back({prev, b, false});
      parts.push_back({b, e, true});
      prev = e;
    }
    if (prev != piece.size()) parts.push_back({prev, piece.size(), false});
  }
  if (invert) {
    for (auto& p : parts) p.flag = !p.flag;
  }
  merged.clear();
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const auto& p : parts) merged.push_back({p.begin, p.end, false});
      break;
    case SplitBehavior::kRemoved:
      merged = parts;
      break;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const auto& p : parts) {
        if (p.flag == previous_match && !merged.empty()) {
          merged.back().end = p.end;
        } else {
          merged.push_back({p.begin, p.end, false});
        }
        previous_match = p.flag;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const auto& p : parts) {
        if (p.flag && !previous_match && !merged.empty()) {
          merged.back().end = p.end;
        } else {
          merged.push_back({p.begin, p.end, false});
        }
        previous_match = p.flag;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (size_t k = parts.size(); k-- > 0;) {
        const auto& p = parts[k];
        if (p.flag && !previous_match && !merged.empty()) {
          merged.back().begin = p.begin;
        } else {
          merged.push_back({p.begin, p.end, false});
        }
        previous_match = p.flag;
      }
      std::reverse(merged.begin(), merged.end());
      break;
    }
  }
  for (const auto& p : merged) {
    if (!p.flag && p.end > p.begin) out.push_back(piece.substr(p.begin, p.end - p.begin));
  }
}

void PreTokenizer::split(std::string_view text, Pieces& out) const {
  thread_local std::vector<std::string_view> current, next;
  current.clear();
  current.push_back(text);
  for (const auto& step : steps_) {
    next.clear();
    if (step.kind == PreTokenizerStep::Kind::kPrefixSpace) {
      for (auto p : current) {
        if (!p.empty() && p.front() == ' ') {
          next.push_back(p);
        } else {
          out.arena.push_back(" ");
          out.arena.back().append(p);
          next.push_back(out.arena.back());
        }
      }
    } else {
      const SplitMatcher& m =
          (reference_only_ && step.reference_matcher) ? *step.reference_matcher : *step.matcher;
      for (auto p : current) split_piece(p, m, step.behavior, step.invert, next);
    }
    std::swap(current, next);
  }
  for (auto p : current) {
    if (!p.empty()) out.items.push_back(p);
  }
}

std::string PreTokenizer::describe() const {
  std::string s;
  for (const auto& step : steps_) {
    if (!s.empty()) s += ", ";
    if (step.kind == PreTokenizerStep::Kind::kPrefixSpace) {
      s += "prefix-space";
    } else {
      s += (reference_only_ && step.reference_matcher) ? step.reference_matcher->name()
                                                       : step.matcher->name();
    }
  }
  return s;
}

}  // namespace engram::text
