#include "engram/hash/hash_config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include <nlohmann/json.hpp>

#include "engram/util/error.h"
#include "engram/util/file.h"

namespace engram::hash {
namespace {

const char* kDefaultJson = R"({"engram_vocab_size": [646400, 646400], "max_ngram_size": 3,
  "n_embed_per_ngram": 512, "n_head_per_ngram": 8, "layer_ids": [1, 15], "pad_id": 2, "seed": 0,
  "kernel_size": 4, "hidden_size": 1024, "hc_mult": 4})";

// kDefaultJson with `field` replaced by `value` (a JSON text), or removed when value is "".
std::string with_field(const std::string& field, const std::string& value) {
  nlohmann::json j = nlohmann::json::parse(kDefaultJson);
  if (value.empty()) {
    j.erase(field);
  } else {
    j[field] = nlohmann::json::parse(value);
  }
  return j.dump();
}

// The message of the exception of type E that parsing `text` throws ("" if none).
template <typename E>
std::string error_of(const std::string& text) {
  try {
    EngramHashConfig::from_json(text, "cfg.json");
  } catch (const E& e) {
    return e.what();
  }
  return "";
}

TEST(HashConfig, ParsesTheReferenceDefaults) {
  const EngramHashConfig c = EngramHashConfig::from_json(kDefaultJson, "cfg.json");
  EXPECT_EQ(c.engram_vocab_size, (std::vector<int64_t>{646400, 646400}));
  EXPECT_EQ(c.max_ngram_size, 3);
  EXPECT_EQ(c.n_embed_per_ngram, 512);
  EXPECT_EQ(c.n_head_per_ngram, 8);
  EXPECT_EQ(c.layer_ids, (std::vector<int>{1, 15}));
  EXPECT_EQ(c.pad_id, 2);
  EXPECT_EQ(c.seed, 0u);
  EXPECT_EQ(c.kernel_size, 4);
  EXPECT_EQ(c.hidden_size, 1024);
  EXPECT_EQ(c.hc_mult, 4);
  EXPECT_FALSE(c.dead_token_id.has_value());
  EXPECT_EQ(c.ids_per_token(), 16);
}

TEST(HashConfig, OptionalFieldsTakeTheirDefaults) {
  const EngramHashConfig c = EngramHashConfig::from_json(
      R"({"engram_vocab_size": [5003, 4001, 3001], "max_ngram_size": 4, "n_embed_per_ngram": 32,
          "n_head_per_ngram": 4, "layer_ids": [0, 3, 7], "pad_id": 2, "seed": 18446744073709551615,
          "dead_token_id": -1})",
      "small.json");
  EXPECT_EQ(c.kernel_size, 4);
  EXPECT_EQ(c.hidden_size, 0);
  EXPECT_EQ(c.hc_mult, 1);
  EXPECT_EQ(c.seed, UINT64_MAX);
  EXPECT_EQ(c.dead_token_id, -1);
  EXPECT_EQ(c.ids_per_token(), 12);
}

TEST(HashConfig, ToJsonWritesOneFieldALine) {
  EngramHashConfig c;
  c.dead_token_id = -1;
  EXPECT_EQ(c.to_json(),
            "{\n"
            "  \"engram_vocab_size\": [646400, 646400],\n"
            "  \"max_ngram_size\": 3,\n"
            "  \"n_embed_per_ngram\": 512,\n"
            "  \"n_head_per_ngram\": 8,\n"
            "  \"layer_ids\": [1, 15],\n"
            "  \"pad_id\": 2,\n"
            "  \"seed\": 0,\n"
            "  \"kernel_size\": 4,\n"
            "  \"hidden_size\": 0,\n"
            "  \"hc_mult\": 1,\n"
            "  \"dead_token_id\": -1\n"
            "}");
}

TEST(HashConfig, JsonRoundTrip) {
  EngramHashConfig c = EngramHashConfig::from_json(kDefaultJson, "cfg.json");
  c.dead_token_id = -1;
  c.seed = 12345678901234567890ULL;
  const EngramHashConfig back = EngramHashConfig::from_json(c.to_json(), "round-trip");
  EXPECT_EQ(back.to_json(), c.to_json());
  EXPECT_EQ(back.seed, c.seed);
  EXPECT_EQ(back.dead_token_id, -1);
  EXPECT_EQ(back.engram_vocab_size, c.engram_vocab_size);
  EXPECT_EQ(back.layer_ids, c.layer_ids);
}

TEST(HashConfig, UnknownFieldIsAFormatError) {
  const std::string msg = error_of<FormatError>(with_field("max_ngram_sise", "3"));
  EXPECT_NE(msg.find("cfg.json: max_ngram_sise: unknown field"), std::string::npos) << msg;
}

TEST(HashConfig, MistypedAndMissingFieldsAreFormatErrors) {
  EXPECT_EQ(error_of<FormatError>(with_field("max_ngram_size", R"("3")")),
            R"(cfg.json: max_ngram_size: expected an integer, found a string "3")");
  EXPECT_EQ(error_of<FormatError>(with_field("engram_vocab_size", "646400")),
            "cfg.json: engram_vocab_size: expected an array, found an integer");
  EXPECT_EQ(error_of<FormatError>(with_field("layer_ids", "[1, 2.5]")),
            "cfg.json: layer_ids[1]: expected an integer, found a number 2.5");
  EXPECT_EQ(error_of<FormatError>(with_field("seed", "-1")),
            "cfg.json: seed: expected a non-negative integer, found -1");
  EXPECT_EQ(error_of<FormatError>(with_field("n_head_per_ngram", "4294967296")),
            "cfg.json: n_head_per_ngram: integer 4294967296 is out of range");
  EXPECT_EQ(error_of<FormatError>(with_field("pad_id", "")), R"(cfg.json: missing field "pad_id")");
  EXPECT_NE(error_of<FormatError>("{\"max_ngram_size\": 3,").find("cfg.json: invalid JSON"),
            std::string::npos);
  EXPECT_EQ(error_of<FormatError>("[1, 2]"), "cfg.json: expected an object, found an array");
}

TEST(HashConfig, NonsenseValuesAreConfigErrors) {
  struct Case {
    const char* field;
    const char* value;
    const char* message;
  };
  const Case cases[] = {
      {"max_ngram_size", "1", "cfg.json: max_ngram_size: 1 is less than 2"},
      {"engram_vocab_size", "[646400]",
       "cfg.json: engram_vocab_size: has 1 sizes, max_ngram_size 3 needs 2 (one per order n = 2 .. "
       "3)"},
      {"engram_vocab_size", "[646400, 1]", "cfg.json: engram_vocab_size[1]: 1 is less than 2"},
      {"engram_vocab_size", "[-5, 646400]", "cfg.json: engram_vocab_size[0]: -5 is less than 2"},
      {"engram_vocab_size", "[646400, 3000000000]",
       "cfg.json: engram_vocab_size[1]: 3000000000 is too large: table ids must fit in int32"},
      {"engram_vocab_size", "[646400, 2147483600]",
       "cfg.json: engram_vocab_size[1]: 2147483600 is too large: layer 1, n = 3, head 2 would get "
       "prime 2147483659, beyond int32 (2147483647)"},
      {"n_head_per_ngram", "0", "cfg.json: n_head_per_ngram: 0 is less than 1"},
      {"n_embed_per_ngram", "500",
       "cfg.json: n_embed_per_ngram: 500 is not divisible by n_head_per_ngram 8"},
      {"n_embed_per_ngram", "0", "cfg.json: n_embed_per_ngram: 0 is less than 1"},
      {"layer_ids", "[]", "cfg.json: layer_ids: is empty (no Engram layer)"},
      {"layer_ids", "[1, 15, 1]", "cfg.json: layer_ids[2]: 1 is a duplicate"},
      {"layer_ids", "[-1]", "cfg.json: layer_ids[0]: -1 is negative"},
      {"pad_id", "-2", "cfg.json: pad_id: -2 is negative"},
      {"kernel_size", "0", "cfg.json: kernel_size: 0 is less than 1"},
      {"hidden_size", "-64", "cfg.json: hidden_size: -64 is negative (0 = not given)"},
      {"hc_mult", "0", "cfg.json: hc_mult: 0 is less than 1"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(error_of<ConfigError>(with_field(c.field, c.value)), c.message)
        << c.field << " = " << c.value;
  }
}

TEST(HashConfig, ValidateNamesTheSource) {
  EngramHashConfig c;
  c.max_ngram_size = 4;  // engram_vocab_size still has 2 sizes
  try {
    c.validate("--config");
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("--config: engram_vocab_size: has 2 sizes", 0), 0u)
        << e.what();
  }
  EXPECT_NO_THROW(EngramHashConfig{}.validate());
}

TEST(HashConfig, FromFile) {
  char path[] = "/tmp/engram_hash_config_test.XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ::close(fd);
  write_file_atomic(path, with_field("max_ngram_size", "4"));
  try {
    EngramHashConfig::from_file(path);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {  // the message names the file
    EXPECT_EQ(
        std::string(e.what()).rfind(std::string(path) + ": engram_vocab_size: has 2 sizes", 0), 0u)
        << e.what();
  }
  write_file_atomic(path, kDefaultJson);
  EXPECT_EQ(EngramHashConfig::from_file(path).layer_ids, (std::vector<int>{1, 15}));
  ::unlink(path);
  EXPECT_THROW(EngramHashConfig::from_file("/nonexistent/engram.json"), IoError);
}

}  // namespace
}  // namespace engram::hash
