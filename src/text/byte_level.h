// GPT-2's byte <-> character mapping used by byte-level BPE: printable Latin-1 bytes map to
// themselves, the other 68 bytes to U+0100.. in order.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace engram::text::byte_level {

// The character that byte b is written as in a byte-level vocabulary.
char32_t byte_to_char(uint8_t b);
// The byte a character stands for, if it is one of the 256 byte characters.
std::optional<uint8_t> char_to_byte(char32_t c);

// The UTF-8 string of byte characters for raw bytes (e.g. " a" -> "Ġa").
std::string encode(std::string_view bytes);
// The raw bytes of a byte-level token string; nullopt if it has a character outside the map.
std::optional<std::string> decode(std::string_view token);

}  // namespace engram::text::byte_level
