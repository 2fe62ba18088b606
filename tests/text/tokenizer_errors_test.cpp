// tokenizer.json validation: every malformed or unsupported file gives a FormatError/IoError
// naming the file and the field; and a small hand-made GPT-2-style tokenizer encodes as BPE says.
#include <gtest/gtest.h>

#include "engram/text/tokenizer.h"
#include "engram/util/error.h"
#include "text/byte_level.h"
#include "util/json.h"

namespace engram::text {
namespace {

using json::Json;

// A tiny byte-level BPE: the 256 byte characters plus merges Ġ+t, h+e, Ġt+he, l+o, lo+w.
Json tiny_tokenizer() {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level::encode(std::string(1, static_cast<char>(b)))] = b;
  const char* extra[] = {"Ġt", "he", "Ġthe", "lo", "low"};
  for (int i = 0; i < 5; ++i) vocab[extra[i]] = 256 + i;
  Json doc = {
      {"version", "1.0"},
      {"added_tokens", Json::array({Json{{"id", 261},
                                         {"content", "<|end|>"},
                                         {"special", true},
                                         {"normalized", false},
                                         {"lstrip", false},
                                         {"rstrip", false},
                                         {"single_word", false}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"},
        {"add_prefix_space", true},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"vocab", vocab},
        {"merges", Json::array({"Ġ t", "h e", Json::array({"Ġt", "he"}), "l o", "lo w"})}}},
  };
  return doc;
}

std::string expect_format_error(const Json& doc) {
  try {
    Tokenizer::from_json(doc.dump(), "tok.json");
  } catch (const FormatError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a FormatError";
  return "";
}

TEST(TinyTokenizer, EncodesWithPrefixSpaceRegexAndMerges) {
  const Tokenizer t = Tokenizer::from_json(tiny_tokenizer().dump(), "tiny");
  EXPECT_EQ(t.vocab_size(), 262u);
  // add_prefix_space: "the" -> " the" -> Ġthe; "low" -> " low" -> Ġ + low.
  EXPECT_EQ(t.encode("the low"),
            (std::vector<uint32_t>{258, byte_level::char_to_byte(U'Ġ').value(), 260}));
  // The added token splits the text; each side gets its own prefix space.
  const auto ids = t.encode("the<|end|>the");
  EXPECT_EQ(ids, (std::vector<uint32_t>{258, 261, 258}));
  EXPECT_EQ(t.decode(std::vector<uint32_t>{258, 261}), " the<|end|>");
}

TEST(TokenizerErrors, MissingFileNamesThePath) {
  try {
    Tokenizer::from_file("/nonexistent/dir/tokenizer.json");
    FAIL();
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/tokenizer.json"), std::string::npos)
        << e.what();
  }
}

TEST(TokenizerErrors, InvalidJson) {
  try {
    Tokenizer::from_json("{\"model\": [", "broken.json");
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("broken.json: invalid JSON"), std::string::npos)
        << e.what();
  }
}

TEST(TokenizerErrors, UnsupportedModelType) {
  Json doc = tiny_tokenizer();
  doc["model"]["type"] = "WordPiece";
  const std::string msg = expect_format_error(doc);
  EXPECT_NE(msg.find("tok.json: model.type: unsupported model \"WordPiece\""), std::string::npos)
      << msg;
}

TEST(TokenizerErrors, MergeOfUnknownToken) {
  Json doc = tiny_tokenizer();
  doc["model"]["merges"].push_back("x yz");
  const std::string msg = expect_format_error(doc);
  EXPECT_NE(msg.find("model.merges[5]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"yz\" is not in the vocabulary"), std::string::npos) << msg;
}

TEST(TokenizerErrors, MalformedMerge) {
  Json doc = tiny_tokenizer();
  doc["model"]["merges"][1] = "abc";
  EXPECT_NE(expect_format_error(doc).find("model.merges[1]: expected \"left right\""),
            std::string::npos);
  doc["model"]["merges"][1] = 7;
  EXPECT_NE(expect_format_error(doc).find("model.merges[1]"), std::string::npos);
}

TEST(TokenizerErrors, BadVocabularyIds) {
  Json doc = tiny_tokenizer();
  doc["model"]["vocab"]["Ġt"] = -3;
  EXPECT_NE(expect_format_error(doc).find("model.vocab.Ġt: token id -3 is out of range"),
            std::string::npos);
  doc = tiny_tokenizer();
  doc["model"]["vocab"]["Ġt"] = "x";
  EXPECT_NE(expect_format_error(doc).find("expected an integer"), std::string::npos);
  doc = tiny_tokenizer();
  doc["model"]["vocab"]["Ġt"] = 0;
  EXPECT_NE(expect_format_error(doc).find("used by two tokens"), std::string::npos);
}

TEST(TokenizerErrors, UnsupportedPretokenizerAndMissingByteLevel) {
  Json doc = tiny_tokenizer();
  doc["pre_tokenizer"] = {{"type", "Metaspace"}};
  EXPECT_NE(
      expect_format_error(doc).find("pre_tokenizer.type: unsupported pre-tokenizer \"Metaspace\""),
      std::string::npos);
  doc["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "\\s+"}}}, {"behavior", "Isolated"}};
  EXPECT_NE(expect_format_error(doc).find("no ByteLevel step"), std::string::npos);
  doc["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "("}}}, {"behavior", "Isolated"}};
  EXPECT_NE(expect_format_error(doc).find("cannot compile regex"), std::string::npos);
  doc["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}};
  EXPECT_NE(
      expect_format_error(doc).find("pre_tokenizer.behavior: unknown split behavior \"Sideways\""),
      std::string::npos);
}

TEST(TokenizerErrors, UnsupportedDecoderNormalizerAndModelOptions) {
  Json doc = tiny_tokenizer();
  doc["decoder"] = {{"type", "WordPiece"}};
  EXPECT_NE(expect_format_error(doc).find("decoder: unsupported decoder"), std::string::npos);
  doc = tiny_tokenizer();
  doc.erase("decoder");
  EXPECT_NE(expect_format_error(doc).find("missing \"decoder\""), std::string::npos);
  doc = tiny_tokenizer();
  doc["normalizer"] = {{"type", "BertNormalizer"}};
  EXPECT_NE(
      expect_format_error(doc).find("normalizer.type: unsupported normalizer \"BertNormalizer\""),
      std::string::npos);
  doc = tiny_tokenizer();
  doc["model"]["dropout"] = 0.1;
  EXPECT_NE(expect_format_error(doc).find("model.dropout"), std::string::npos);
  doc = tiny_tokenizer();
  doc["model"]["continuing_subword_prefix"] = "##";
  EXPECT_NE(expect_format_error(doc).find("model.continuing_subword_prefix"), std::string::npos);
}

TEST(TokenizerErrors, BadAddedTokens) {
  Json doc = tiny_tokenizer();
  doc["added_tokens"][0]["content"] = "";
  EXPECT_NE(
      expect_format_error(doc).find("added_tokens[0].content: an added token cannot be empty"),
      std::string::npos);
  doc = tiny_tokenizer();
  doc["added_tokens"][0].erase("id");
  EXPECT_NE(expect_format_error(doc).find("added_tokens[0]: missing field \"id\""),
            std::string::npos);
  doc = tiny_tokenizer();
  doc["added_tokens"][0]["lstrip"] = "yes";
  EXPECT_NE(expect_format_error(doc).find("added_tokens[0].lstrip: expected true or false"),
            std::string::npos);
}

TEST(TokenizerErrors, NotAnObject) {
  EXPECT_NE(expect_format_error(Json::array()).find("tok.json: expected an object"),
            std::string::npos);
  Json doc = tiny_tokenizer();
  doc.erase("model");
  EXPECT_NE(expect_format_error(doc).find("missing field \"model\""), std::string::npos);
}

}  // namespace
}  // namespace engram::text
