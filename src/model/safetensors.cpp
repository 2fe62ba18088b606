#include "engram/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <string_view>
#include <tuple>
#include <utility>

#include "engram/util/error.h"
#include "engram/util/file.h"
#include "util/json.h"

namespace engram {
namespace {

using json::Json;

// Tensor bytes are stored little-endian and copied as they are.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes little-endian");

// The reference library's limit on the JSON header.
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;
// A safetensors header nests three deep (header, entry, shape); anything much deeper is hostile
// and would only cost memory to build.
constexpr int kMaxJsonDepth = 16;
constexpr std::string_view kMetadataKey = "__metadata__";

// A read-only private mapping of a whole file; the owner of every view a SafetensorsFile hands
// out. Tensor views take a void*, but writing through them faults: callers copy first.
struct Mapping {
  void* addr = nullptr;
  size_t size = 0;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (addr != nullptr) ::munmap(addr, size);
  }
};

// A JSON string literal for messages and headers; invalid UTF-8 is replaced, never thrown on.
std::string json_quoted(std::string_view s) {
  return Json(std::string(s)).dump(-1, ' ', false, Json::error_handler_t::replace);
}

[[noreturn]] void fail_at(const std::string& where, const std::string& what) {
  throw FormatError(error_message(where, what));
}

std::string tensor_where(const std::string& path, std::string_view name) {
  return path + ": tensor " + json_quoted(name);
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i != 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string range_text(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

// A JSON integer in [0, 2^64); nothing for negative numbers, fractions and non-numbers.
std::optional<uint64_t> non_negative_integer(const Json& j) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  if (j.is_number_integer() && j.get<int64_t>() >= 0)
    return static_cast<uint64_t>(j.get<int64_t>());
  return std::nullopt;
}

// Parses the header text. nlohmann keeps the last of duplicate keys silently, so keys are
// checked here, object by object, as the parser meets them.
Json parse_header(std::string_view text, const std::string& path) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string tensor;                       // the current top-level key
  auto on_event = [&](int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
      case Json::parse_event_t::array_start:
        if (depth >= kMaxJsonDepth) {
          throw FormatError(error_message(path, "header: JSON nested deeper than " +
                                                    std::to_string(kMaxJsonDepth) + " levels"));
        }
        if (event == Json::parse_event_t::object_start) keys.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        keys.pop_back();
        break;
      case Json::parse_event_t::key: {
        const std::string& key = parsed.get_ref<const std::string&>();
        const bool fresh = keys.back().insert(key).second;
        if (depth == 1) {  // a key of the root object
          if (!fresh) {
            throw FormatError(error_message(
                path, key == kMetadataKey ? "duplicate \"__metadata__\""
                                          : "duplicate tensor name " + json_quoted(key)));
          }
          tensor = key;
        } else if (!fresh) {
          const std::string where =
              tensor == kMetadataKey ? path + ": __metadata__" : tensor_where(path, tensor);
          throw FormatError(error_message(where, "duplicate key " + json_quoted(key)));
        }
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return Json::parse(text.begin(), text.end(), on_event);
  } catch (const Json::parse_error& e) {
    // nlohmann's message carries the byte offset; invalid UTF-8 in a string lands here too.
    std::string what = e.what();
    const auto pos = what.find("parse error");
    throw FormatError(error_message(
        path, "header: invalid JSON: " + (pos == std::string::npos ? what : what.substr(pos))));
  }
}

std::map<std::string, std::string> parse_metadata(const Json& j, const std::string& path) {
  const std::string where = path + ": __metadata__";
  if (!j.is_object()) {
    throw FormatError(error_message(
        where, std::string("expected an object of strings, found ") + json::type_name(j)));
  }
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : j.items()) {
    if (!value.is_string()) {
      throw FormatError(error_message(where + ": " + json_quoted(key),
                                      std::string("expected a string, found ") +
                                          json::type_name(value) + " " + json::brief(value)));
    }
    out.emplace(key, value.get<std::string>());
  }
  return out;
}

struct Entry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // within the data area
};

Entry parse_entry(const std::string& name, const Json& j, uint64_t data_size,
                  const std::string& path) {
  const std::string where = tensor_where(path, name);
  auto fail = [&](const std::string& what) { fail_at(where, what); };
  if (!j.is_object()) {
    fail(std::string("expected an object with dtype, shape and data_offsets, found ") +
         json::type_name(j) + " " + json::brief(j));
  }
  for (const auto& item : j.items()) {
    const std::string& key = item.key();
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      fail("unknown key " + json_quoted(key) + " (expected dtype, shape, data_offsets)");
    }
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!j.contains(key)) fail(std::string("missing \"") + key + "\"");
  }
  Entry e;
  e.name = name;

  const Json& dtype = j["dtype"];
  if (!dtype.is_string()) {
    fail(std::string("dtype: expected a string, found ") + json::type_name(dtype) + " " +
         json::brief(dtype));
  }
  if (!dtype_from_name(dtype.get_ref<const std::string&>(), e.dtype)) {
    fail("dtype: unknown dtype " + json::brief(dtype));
  }

  const Json& shape = j["shape"];
  if (!shape.is_array()) {
    fail(std::string("shape: expected a list of non-negative integers, found ") +
         json::type_name(shape) + " " + json::brief(shape));
  }
  // Elements counted with every 0 taken as 1, so that strides of an empty tensor fit too.
  uint64_t span = 1;
  uint64_t numel = 1;
  bool overflow = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    const std::optional<uint64_t> dim = non_negative_integer(shape[i]);
    if (!dim || *dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail("shape[" + std::to_string(i) + "]: expected a non-negative integer, found " +
           json::brief(shape[i]));
    }
    e.shape.push_back(static_cast<int64_t>(*dim));
    overflow = overflow || __builtin_mul_overflow(span, std::max<uint64_t>(*dim, 1), &span);
    numel *= *dim;  // cannot overflow when span does not
  }
  uint64_t span_bytes = 0;
  overflow = overflow || __builtin_mul_overflow(span, dtype_size(e.dtype), &span_bytes) ||
             span_bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  if (overflow) fail("shape " + shape_text(e.shape) + ": element count overflows");
  const uint64_t need = numel * dtype_size(e.dtype);

  const Json& offsets = j["data_offsets"];
  std::optional<uint64_t> begin, end;
  if (offsets.is_array() && offsets.size() == 2) {
    begin = non_negative_integer(offsets[0]);
    end = non_negative_integer(offsets[1]);
  }
  if (!begin || !end) {
    fail("data_offsets: expected [begin, end] with non-negative integers, found " +
         json::brief(offsets));
  }
  e.begin = *begin;
  e.end = *end;
  const std::string range = "data_offsets " + range_text(e.begin, e.end);
  if (e.begin > e.end) fail(range + ": begin is after end");
  if (e.end > data_size) {
    fail(range + " reach past the end of the " + std::to_string(data_size) + "-byte data area");
  }
  if (e.end - e.begin != need) {
    fail(range + " hold " + std::to_string(e.end - e.begin) + " bytes, " +
         std::string(dtype_name(e.dtype)) + shape_text(e.shape) + " needs " + std::to_string(need));
  }
  return e;
}

// The tensors, sorted by offset, must tile the data area exactly: no overlap, no gap (as the
// reference library requires).
void check_coverage(const std::vector<Entry>& sorted, uint64_t data_size, const std::string& path) {
  auto fail = [&](const std::string& what) { fail_at(path, what); };
  auto describe = [](const Entry& e) {
    return json_quoted(e.name) + " " + range_text(e.begin, e.end);
  };
  auto uncovered = [](uint64_t from, uint64_t to) {
    return "no tensor covers data bytes [" + std::to_string(from) + ", " + std::to_string(to) + ")";
  };
  if (sorted.empty()) {
    if (data_size != 0) fail(uncovered(0, data_size) + " (the header lists no tensors)");
    return;
  }
  if (sorted.front().begin != 0) {
    fail(uncovered(0, sorted.front().begin) + " before tensor " + describe(sorted.front()));
  }
  for (size_t i = 1; i < sorted.size(); ++i) {
    const Entry& prev = sorted[i - 1];
    const Entry& next = sorted[i];
    if (next.begin < prev.end) {
      fail("tensors " + describe(prev) + " and " + describe(next) + " overlap");
    }
    if (next.begin > prev.end) {
      fail(uncovered(prev.end, next.begin) + " between tensors " + describe(prev) + " and " +
           describe(next));
    }
  }
  if (sorted.back().end != data_size) {
    fail(uncovered(sorted.back().end, data_size) + " after tensor " + describe(sorted.back()));
  }
}

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not hang; it is refused below as not a regular file.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    throw IoError(error_message(path, std::string("cannot open: ") + std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int saved = errno;
    ::close(fd);
    throw IoError(error_message(path, std::string("cannot stat: ") + std::strerror(saved)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw IoError(error_message(path, "not a regular file"));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    throw FormatError(error_message(path, "file has " + std::to_string(file_size) +
                                              " bytes, too short for the 8-byte header length"));
  }
  auto mapping = std::make_shared<Mapping>();
  void* addr = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping keeps the file open
  if (addr == MAP_FAILED) {
    throw IoError(error_message(path, std::string("cannot map: ") + std::strerror(map_errno)));
  }
  mapping->addr = addr;
  mapping->size = file_size;
  const auto* bytes = static_cast<const unsigned char*>(addr);

  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes, 8);  // little-endian, as the static_assert above ensures
  if (header_size > kMaxHeaderBytes) {
    throw FormatError(error_message(path, "header length " + std::to_string(header_size) +
                                              " exceeds the limit of " +
                                              std::to_string(kMaxHeaderBytes) + " bytes"));
  }
  if (8 + header_size > file_size) {
    throw FormatError(error_message(path, "header length " + std::to_string(header_size) +
                                              " needs " + std::to_string(8 + header_size) +
                                              " bytes, but the file has " +
                                              std::to_string(file_size)));
  }
  const uint64_t data_size = file_size - 8 - header_size;
  const unsigned char* data = bytes + 8 + header_size;

  const Json header =
      parse_header(std::string_view(reinterpret_cast<const char*>(bytes + 8), header_size), path);
  if (!header.is_object()) {
    throw FormatError(error_message(
        path, std::string("header: expected a JSON object, found ") + json::type_name(header)));
  }

  SafetensorsFile file;
  file.path_ = path;
  std::vector<Entry> entries;
  entries.reserve(header.size());
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      file.metadata_ = parse_metadata(value, path);
    } else {
      entries.push_back(parse_entry(key, value, data_size, path));
    }
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  check_coverage(entries, data_size, path);

  // Everything is valid: hand out views. The data area starts wherever the header ends, so a
  // tensor may sit at an address its dtype cannot be loaded from (e.g. F32 after a U8[3]);
  // such a tensor is copied rather than viewed, since typed access to it would be undefined.
  file.names_.reserve(entries.size());
  file.tensors_.reserve(entries.size());
  for (Entry& e : entries) {
    void* at = const_cast<unsigned char*>(data + e.begin);
    Tensor t;
    if (reinterpret_cast<uintptr_t>(at) % dtype_size(e.dtype) == 0) {
      t = Tensor::view(e.dtype, e.shape, at, mapping);
    } else {
      t = Tensor(e.dtype, e.shape);
      if (t.nbytes() != 0) std::memcpy(t.raw(), at, t.nbytes());
    }
    file.index_.emplace(e.name, file.names_.size());
    file.names_.push_back(std::move(e.name));
    file.tensors_.push_back(std::move(t));
  }
  return file;
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) throw FormatError(error_message(path_, "no tensor " + json_quoted(name)));
  return tensors_[it->second];
}

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  auto fail = [&](const std::string& what) { throw InputError(error_message(path, what)); };
  // A JSON string literal; names and values must be valid UTF-8 to be written at all.
  auto literal = [&](const std::string& s, const std::string& what) -> std::string {
    try {
      return Json(s).dump();
    } catch (const Json::type_error&) {
      fail(what + " is not valid UTF-8");
      throw;  // not reached
    }
  };

  // Everything is checked before the temporary file exists.
  std::set<std::string_view> seen;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    if (name.empty()) fail("tensor #" + std::to_string(i) + " has an empty name");
    if (name == kMetadataKey) fail("\"__metadata__\" is reserved and cannot name a tensor");
    if (!seen.insert(name).second) fail("duplicate tensor name " + json_quoted(name));
    if (t.empty() && t.numel() != 0) fail("tensor " + json_quoted(name) + " has no data");
  }

  // Compact JSON in the order given, keys of an entry in the reference library's order.
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      if (!first) header += ',';
      first = false;
      header += literal(key, "metadata key " + json_quoted(key));
      header += ':';
      header += literal(value, "metadata value of " + json_quoted(key));
    }
    header += '}';
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (header.size() > 1) header += ',';
    header += literal(name, "tensor name " + json_quoted(name));
    header += ":{\"dtype\":\"";
    header += dtype_name(t.dtype());
    header += "\",\"shape\":[";
    for (size_t d = 0; d < t.rank(); ++d) {
      if (d != 0) header += ',';
      header += std::to_string(t.dim(d));
    }
    const uint64_t end = offset + t.nbytes();
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(end) + "]}";
    offset = end;
  }
  header += '}';
  // Spaces up to a multiple of 8, as the reference library pads, so the data area is aligned.
  header.resize((header.size() + 7) / 8 * 8, ' ');
  if (header.size() > kMaxHeaderBytes) {
    fail("header of " + std::to_string(header.size()) + " bytes exceeds the limit of " +
         std::to_string(kMaxHeaderBytes));
  }

  AtomicFileWriter out(path);
  const uint64_t header_size = header.size();
  out.write(&header_size, 8);
  out.write(header);
  for (const auto& [name, t] : tensors) {
    if (t.numel() == 0) continue;
    if (t.is_contiguous()) {
      out.write(t.raw(), t.nbytes());
    } else {
      const Tensor c = t.contiguous();
      out.write(c.raw(), c.nbytes());
    }
  }
  out.commit();
}

}  // namespace engram
