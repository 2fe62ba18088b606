// engram table convert | gather: Engram tables as .engt files (memory/engt_file.h).
//   convert: a 2-D tensor of a safetensors file → an .engt table in one row format, with the
//            quantization error measured on the way;
//   gather:  rows of an .engt table, dequantized, as JSON (through the host or file tier).
#include <charconv>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "args.h"
#include "commands.h"
#include "engram/memory/engt_file.h"
#include "engram/memory/row_format.h"
#include "engram/model/safetensors.h"
#include "engram/util/error.h"
#include "util/json.h"

namespace engram::cli {
namespace {

constexpr const char* kTableUsage =
    R"(Usage:
  engram table convert --in FILE.safetensors --tensor NAME --format f32|bf16|fp8|int8 --out FILE.engt
      Writes the 2-D tensor NAME (F32, BF16 or F64) as an .engt table; prints
      {"out", "format", "rows", "width", "row_bytes", "bytes", "max_abs_error", "rms_error"}.
  engram table gather --table FILE.engt --rows 3,17,42 [--tier host|file]
      Prints the rows, dequantized, as one JSON array of arrays (--tier: file, the default,
      reads only the blocks holding the rows; host loads the whole table first).
)";

std::string shape_string(const Tensor& t) {
  std::string s = "[";
  for (size_t i = 0; i < t.rank(); ++i) s += (i ? ", " : "") + std::to_string(t.dim(i));
  return s + "]";
}

// The tensor to convert, with the checks that give clear errors.
Tensor table_tensor(const SafetensorsFile& file, const std::string& name) {
  if (!file.contains(name)) {
    std::string tables;
    int listed = 0, tables_found = 0;
    for (const std::string& n : file.names()) {
      const Tensor t = file.get(n);
      if (t.rank() != 2) continue;
      ++tables_found;
      if (listed++ < 20) tables += "\n  " + n + " " + t.describe();
    }
    if (tables_found > 20) tables += "\n  ... and " + std::to_string(tables_found - 20) + " more";
    throw InputError(
        error_message(file.path(), "no tensor \"" + name + "\"" +
                                       (tables_found ? "; its 2-D tensors are:" + tables
                                                     : " (and the file has no 2-D tensors)")));
  }
  Tensor t = file.get(name);
  const std::string where = file.path() + ": tensor \"" + name + "\"";
  if (t.rank() != 2) {
    throw InputError(
        error_message(where, "expected a 2-D table (rows, width), got shape " + shape_string(t)));
  }
  const DType d = t.dtype();
  if (d != DType::kF32 && d != DType::kBF16 && d != DType::kF64) {
    throw InputError(error_message(where, "dtype " + std::string(dtype_name(d)) +
                                              " is not supported (expected F32, BF16 or F64)"));
  }
  return t;
}

int run_convert(int argc, char** argv) {
  const Args args(argc, argv, 3, {"in", "tensor", "format", "out"}, {});
  if (!args.positional().empty())
    throw UsageError("unexpected argument \"" + args.positional()[0] + "\"");
  const std::string in = args.required("in"), name = args.required("tensor"),
                    format_arg = args.required("format"), out = args.required("out");
  const auto format = memory::format_from_name(format_arg);
  if (!format) {
    throw UsageError("--format: unknown row format \"" + format_arg +
                     "\" (expected f32, bf16, fp8 or int8)");
  }
  const SafetensorsFile file = SafetensorsFile::open(in);
  const Tensor t = table_tensor(file, name);
  const std::string where = in + ": tensor \"" + name + "\"";
  const int64_t rows = t.dim(0), width = t.dim(1);
  try {
    memory::check_row_width(*format, width);
  } catch (const ConfigError& e) {
    throw InputError(error_message(where, e.what()));
  }

  // Quantization error against the values as stored (F64 included), measured batch by batch.
  double max_abs_error = 0, sum_sq_error = 0;
  std::vector<double> original;
  std::vector<uint8_t> encoded;
  std::vector<float> decoded;
  const memory::RowBatchSource source = [&](int64_t first, int64_t count, float* values) {
    const int64_t n = count * width;
    original.resize(static_cast<size_t>(n));
    const int64_t offset = first * width;
    for (int64_t i = 0; i < n; ++i) {
      double v = 0;
      switch (t.dtype()) {
        case DType::kF64:
          v = t.data<double>()[offset + i];
          break;
        case DType::kF32:
          v = t.data<float>()[offset + i];
          break;
        default:
          v = bf16_to_float(t.data<bf16>()[offset + i]);
          break;
      }
      if (!std::isfinite(v)) {
        throw InputError(
            error_message(where, "row " + std::to_string(first + i / width) + ", column " +
                                     std::to_string(i % width) + ": value " + std::to_string(v) +
                                     " is not finite (a table must hold finite values)"));
      }
      values[i] = static_cast<float>(v);
      if (!std::isfinite(values[i])) {
        throw InputError(error_message(where, "row " + std::to_string(first + i / width) +
                                                  ", column " + std::to_string(i % width) +
                                                  ": value " + std::to_string(v) +
                                                  " does not fit float32"));
      }
      original[static_cast<size_t>(i)] = v;
    }
    encoded.resize(static_cast<size_t>(count * memory::row_bytes(*format, width)));
    decoded.resize(static_cast<size_t>(n));
    memory::encode_rows(*format, values, count, width, encoded.data());
    memory::decode_rows(*format, encoded.data(), count, width, decoded.data(), width);
    for (int64_t i = 0; i < n; ++i) {
      const double e = std::fabs(static_cast<double>(decoded[static_cast<size_t>(i)]) -
                                 original[static_cast<size_t>(i)]);
      max_abs_error = std::max(max_abs_error, e);
      sum_sq_error += e * e;
    }
  };
  memory::write_engt(out, *format, rows, width, source, name);

  const memory::EngtLayout layout = memory::EngtLayout::make(*format, rows, width);
  const int64_t values = rows * width;
  nlohmann::ordered_json result;  // keys in the documented order
  result["out"] = out;
  result["format"] = std::string(memory::format_name(*format));
  result["rows"] = rows;
  result["width"] = width;
  result["row_bytes"] = layout.row_bytes;
  result["bytes"] = layout.file_bytes;
  result["max_abs_error"] = max_abs_error;
  result["rms_error"] = values ? std::sqrt(sum_sq_error / static_cast<double>(values)) : 0.0;
  write_stdout(result.dump() + "\n");
  return 0;
}

std::vector<int64_t> parse_rows(const std::string& list) {
  std::vector<int64_t> rows;
  size_t start = 0;
  for (;;) {
    const size_t comma = list.find(',', start);
    const std::string item =
        list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    int64_t v = 0;
    const auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || p != item.data() + item.size() || v < 0) {
      throw UsageError("--rows: \"" + item +
                       "\" is not a row number (expected comma-separated integers >= 0, e.g. "
                       "3,17,42)");
    }
    rows.push_back(v);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return rows;
}

// Shortest decimal that reads back as the same float; null for NaN and infinities, which JSON
// cannot hold.
void append_float(std::string& s, float v) {
  if (!std::isfinite(v)) {
    s += "null";
    return;
  }
  char buf[32];
  const auto res = std::to_chars(buf, buf + sizeof buf, v);
  s.append(buf, res.ptr);
}

int run_gather(int argc, char** argv) {
  const Args args(argc, argv, 3, {"table", "rows", "tier"}, {});
  if (!args.positional().empty())
    throw UsageError("unexpected argument \"" + args.positional()[0] + "\"");
  const std::string table = args.required("table");
  const std::vector<int64_t> rows = parse_rows(args.required("rows"));
  const std::string tier_arg = args.optional("tier").value_or("file");
  const auto tier = memory::tier_from_name(tier_arg);
  if (!tier) throw UsageError("--tier: unknown tier \"" + tier_arg + "\" (expected host or file)");

  const memory::EngtRowStore store(table, *tier);
  const int64_t width = store.width();
  std::vector<float> values(rows.size() * static_cast<size_t>(width));
  store.gather(rows, values.data(), width);
  std::string s = "[";
  for (size_t i = 0; i < rows.size(); ++i) {
    s += i ? ",[" : "[";
    for (int64_t j = 0; j < width; ++j) {
      if (j) s += ',';
      append_float(s, values[i * static_cast<size_t>(width) + static_cast<size_t>(j)]);
    }
    s += ']';
  }
  write_stdout(s + "]\n");
  return 0;
}

}  // namespace

int run_table(int argc, char** argv) {
  const std::string sub = argc > 2 ? argv[2] : "";
  if (sub == "convert") return run_convert(argc, argv);
  if (sub == "gather") return run_gather(argc, argv);
  if (sub == "--help" || sub == "-h" || sub == "help") {
    write_stdout(kTableUsage);
    return 0;
  }
  if (sub.empty())
    throw UsageError("expected a subcommand: convert or gather\n" + std::string(kTableUsage));
  throw UsageError("unknown subcommand \"" + sub + "\" (expected convert or gather)");
}

}  // namespace engram::cli
