#include "test_corpus.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <random>
#include <string>
#include <vector>

#include "engram/text/tokenizer.h"
#include "engram/train/dataset.h"
#include "engram/util/error.h"
#include "engram/util/file.h"
#include "test_paths.h"

namespace engram::test {

std::string make_temp_dir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + ".XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) throw IoError("mkdtemp " + tmpl + " failed");
  return tmpl;
}

std::string synthetic_tokenizer_path() {
  return fixture_dir() + "/tokenize/synthetic/gpt2.tokenizer.json";
}

std::string prepare_synthetic_corpus(const std::string& dir) {
  const std::string corpus = dir + "/corpus";
  ::mkdir(corpus.c_str(), 0755);
  const char* words[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to",
                         "house", "with", "red", "door", "in", "morning", "light", "old", "man",
                         "saw", "it", "."};
  std::mt19937_64 rng(1);
  for (int d = 0; d < 16; ++d) {
    std::string text;
    for (int w = 0; w < 400; ++w) {
      const std::string word = words[rng() % 22];
      text += word + " ";
      if (word == "the") text += std::string(words[1 + (rng() % 3) * 4]) + " ";
    }
    write_file_atomic(corpus + "/doc" + std::to_string(d) + ".txt", text);
  }
  const text::Tokenizer tok = text::Tokenizer::from_file(synthetic_tokenizer_path());
  train::PrepareOptions o;
  o.inputs = {corpus};
  o.out_dir = dir + "/data";
  o.val_fraction = 0.25;
  train::prepare_dataset(tok, synthetic_tokenizer_path(), o);
  return o.out_dir;
}

}  // namespace engram::test
