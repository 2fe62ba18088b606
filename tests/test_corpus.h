// A small prepared corpus for training tests, built once per process in a temporary folder.
#pragma once

#include <string>

namespace engram::test {

// A fresh folder /tmp/<prefix>.XXXXXX (mkdtemp).
std::string make_temp_dir(const std::string& prefix);

// The synthetic GPT-2 style tokenizer under tests/fixtures (vocabulary 2,005).
std::string synthetic_tokenizer_path();

// `engram prepare` output (train.bin, val.bin, manifest.json) in <dir>/data for 16 documents of
// 400 seeded pseudo-English words, a quarter of them for validation. A little structure to
// learn: "the" is mostly followed by one of three nouns. Tokenized with
// synthetic_tokenizer_path(). Returns <dir>/data.
std::string prepare_synthetic_corpus(const std::string& dir);

}  // namespace engram::test
