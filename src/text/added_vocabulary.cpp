#include "text/added_vocabulary.h"

#include <algorithm>
#include <cstring>

#include "engram/text/utf8.h"
#include "text/unicode_props.h"

namespace engram::text {
namespace {

namespace u = unicode;

bool is_word_char(char32_t c) {
  return c == '_' || u::has(c, u::kAlnum | u::kMark);
}

char32_t last_code_point(std::string_view s) {
  size_t start = s.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  return next_code_point(s, start);
}

bool ends_with_word(std::string_view s) {
  return !s.empty() && is_word_char(last_code_point(s));
}
bool starts_with_word(std::string_view s) {
  size_t i = 0;
  return !s.empty() && is_word_char(next_code_point(s, i));
}

// Start of the whitespace run that ends s (s.size() if none).
size_t trailing_space_start(std::string_view s) {
  size_t e = s.size();
  while (e > 0) {
    size_t start = e - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t j = start;
    if (!u::has(next_code_point(s, j), u::kWhiteSpace)) break;
    e = start;
  }
  return e;
}

// Length of the whitespace run that starts s.
size_t leading_space_length(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    if (!u::has(next_code_point(s, j), u::kWhiteSpace)) break;
    i = j;
  }
  return i;
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(const std::vector<std::string>& patterns,
                                     const std::vector<const AddedToken*>& tokens)
    : tokens_(tokens) {
  nodes_.emplace_back();
  for (size_t k = 0; k < patterns.size(); ++k) {
    const std::string& p = patterns[k];
    if (p.empty()) continue;
    first_byte_[static_cast<uint8_t>(p[0])] = true;
    uint32_t node = 0;
    for (char ch : p) {
      const auto b = static_cast<uint8_t>(ch);
      uint32_t next = child(node, b);
      if (next == 0) {
        next = static_cast<uint32_t>(nodes_.size());
        nodes_.emplace_back();
        auto& kids = nodes_[node].children;
        kids.insert(std::lower_bound(kids.begin(), kids.end(), std::make_pair(b, 0u)), {b, next});
      }
      node = next;
    }
    if (nodes_[node].token < 0) nodes_[node].token = static_cast<int32_t>(k);  // first one wins
  }
  for (int b = 0; b < 256; ++b) {
    if (!first_byte_[b]) continue;
    single_first_byte_ = single_first_byte_ == -1 ? b : -2;
  }
  if (single_first_byte_ == -2) single_first_byte_ = -1;
}

uint32_t AddedTokenMatcher::child(uint32_t node, uint8_t b) const {
  const auto& kids = nodes_[node].children;
  auto it = std::lower_bound(kids.begin(), kids.end(), std::make_pair(b, 0u));
  return (it != kids.end() && it->first == b) ? it->second : 0;
}

void AddedTokenMatcher::split(std::string_view text, std::vector<Segment>& out) const {
  size_t start_offset = 0;  // end of the previous token
  size_t i = 0;
  while (i < text.size()) {
    if (single_first_byte_ >= 0) {  // e.g. every token starts with '<': let memchr skip
      const void* hit = std::memchr(text.data() + i, single_first_byte_, text.size() - i);
      if (hit == nullptr) break;
      i = static_cast<size_t>(static_cast<const char*>(hit) - text.data());
    } else if (!first_byte_[static_cast<uint8_t>(text[i])]) {
      ++i;
      continue;
    }
    // Longest pattern starting at i.
    uint32_t node = 0;
    int32_t best = -1;
    size_t best_end = 0;
    for (size_t j = i; j < text.size(); ++j) {
      node = child(node, static_cast<uint8_t>(text[j]));
      if (node == 0) break;
      if (nodes_[node].token >= 0) {
        best = nodes_[node].token;
        best_end = j + 1;
      }
    }
    if (best < 0) {
      ++i;
      continue;
    }
    const AddedToken& tok = *tokens_[static_cast<size_t>(best)];
    size_t start = i, stop = best_end;
    if (tok.single_word) {
      const bool start_space = start == 0 || !ends_with_word(text.substr(0, start));
      const bool stop_space = stop == text.size() || !starts_with_word(text.substr(stop));
      if (!start_space || !stop_space) {  // rejected, but consumed like any match
        i = best_end;
        continue;
      }
    }
    if (tok.lstrip) start = std::max(trailing_space_start(text.substr(0, start)), start_offset);
    if (tok.rstrip) stop += leading_space_length(text.substr(stop));
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, tok.id});
    start_offset = stop;
    i = stop;
  }
  if (start_offset < text.size()) out.push_back({start_offset, text.size(), -1});
}

}  // namespace engram::text
