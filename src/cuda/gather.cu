// Row gather (include/engram/cuda/gather.h). src/cuda/gather_stub.cpp stands in for this file
// in builds without CUDA.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "cuda/check.h"
#include "engram/cuda/gather.h"
#include "engram/memory/row_format.h"

namespace engram::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kQuantGroup = 32;  // values per scale (memory::kQuantGroupSize)

struct GatherArgs {
  void* out;               // (tokens, heads * width), float or bf16
  const void* table;       // (rows, width)
  const int32_t* ids;      // (tokens, heads)
  const int64_t* offsets;  // (heads)
  int64_t rows, width, tokens, heads;
};

__device__ __forceinline__ float widen(uint16_t bits) {
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

__device__ __forceinline__ uint16_t narrow(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

// Stores of kVec values into a float or bf16 output.
__device__ __forceinline__ void store4(float* o, float4 v) { *reinterpret_cast<float4*>(o) = v; }
__device__ __forceinline__ void store4(uint16_t* o, float4 v) {
  *reinterpret_cast<uint2*>(o) =
      make_uint2(narrow(v.x) | (static_cast<uint32_t>(narrow(v.y)) << 16),
                 narrow(v.z) | (static_cast<uint32_t>(narrow(v.w)) << 16));
}
__device__ __forceinline__ void store1(float* o, float v) { *o = v; }
__device__ __forceinline__ void store1(uint16_t* o, float v) { *o = narrow(v); }

// kVec values per item (4: the width is a multiple of 4 and the pointers are aligned; 1: any).
// Items are numbered in output order: item i writes out[i*kVec .. i*kVec + kVec).
// O: float or uint16_t (bf16 bits). bf16 → bf16 copies bits; f32 → bf16 rounds to nearest even.
template <bool kBf16, int kVec, class O>
__global__ void __launch_bounds__(kThreads) gather_kernel(GatherArgs a) {
  const int64_t chunks = a.width / kVec;  // items per row
  const int64_t items = a.tokens * a.heads * chunks;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items;
       i += stride) {
    const int64_t token_head = i / chunks;  // t * heads + h
    const int64_t col = (i - token_head * chunks) * kVec;
    const int32_t id = __ldg(a.ids + token_head);
    const int64_t row = id + __ldg(a.offsets + token_head % a.heads);
    O* o = static_cast<O*>(a.out) + i * kVec;
    if (id < 0 || row < 0 || row >= a.rows) {
      for (int j = 0; j < kVec; ++j) store1(o + j, __int_as_float(0x7fc00000));  // quiet NaN
      continue;
    }
    const int64_t src = row * a.width + col;
    if constexpr (kVec == 4) {
      float4 v;
      if constexpr (kBf16) {
        const uint2 w = __ldg(reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(a.table) +
                                                             src));  // 4 bf16 in 8 bytes
        v = make_float4(__uint_as_float(w.x << 16), __uint_as_float(w.x & 0xffff0000u),
                        __uint_as_float(w.y << 16), __uint_as_float(w.y & 0xffff0000u));
      } else {
        v = __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(a.table) + src));
      }
      store4(o, v);
    } else if constexpr (kBf16) {
      store1(o, widen(__ldg(static_cast<const uint16_t*>(a.table) + src)));
    } else {
      store1(o, __ldg(static_cast<const float*>(a.table) + src));
    }
  }
}

// ---- quantized rows (memory/row_format.h): fp8 E4M3 + UE8M0 per 32, int8 + float32 per 32 ----

// The value of an FP8 E4M3FN code (exact; the NaN codes S.1111.111 give NaN).
__device__ __forceinline__ float e4m3_value(uint32_t c) {
  const uint32_t sign = (c & 0x80u) << 24, e = (c >> 3) & 15u, m = c & 7u;
  if (e == 15u && m == 7u) return __uint_as_float(sign | 0x7fc00000u);
  const float v = e == 0u ? static_cast<float>(m) * 0.001953125f  // m * 2^-9
                          : __uint_as_float(((e + 120u) << 23) | (m << 20));
  return __uint_as_float(__float_as_uint(v) | sign);
}

// 2^(b - 127) (2^-127 is a subnormal float); NaN for 255.
__device__ __forceinline__ float ue8m0_value(uint32_t b) {
  if (b == 255u) return __int_as_float(0x7fc00000);
  return b == 0u ? __uint_as_float(0x00400000u) : __uint_as_float(b << 23);
}

// 4 values an item, as gather_kernel, from rows of row_bytes bytes: fp8 (kFp8) or int8 codes,
// then the groups' scales (UE8M0 bytes or float32). Each value is code * scale in float, the
// CPU's decode_rows exactly. kVec4Out: the output is aligned for 4-value stores.
template <bool kFp8, bool kVec4Out, class O>
__global__ void __launch_bounds__(kThreads) gather_quant_kernel(GatherArgs a, int64_t row_bytes) {
  const int64_t chunks = a.width / 4;
  const int64_t items = a.tokens * a.heads * chunks;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const auto* table = static_cast<const uint8_t*>(a.table);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items;
       i += stride) {
    const int64_t token_head = i / chunks;
    const int64_t col = (i - token_head * chunks) * 4;
    const int32_t id = __ldg(a.ids + token_head);
    const int64_t row = id + __ldg(a.offsets + token_head % a.heads);
    O* o = static_cast<O*>(a.out) + i * 4;
    float4 v;
    if (id < 0 || row < 0 || row >= a.rows) {
      const float nan = __int_as_float(0x7fc00000);
      v = make_float4(nan, nan, nan, nan);
    } else {
      const uint8_t* r = table + row * row_bytes;
      const int64_t g = col / 32;  // memory::kQuantGroupSize
      float c[4];
      float scale;
      if constexpr (kFp8) {
#pragma unroll
        for (int j = 0; j < 4; ++j) c[j] = e4m3_value(__ldg(r + col + j));
        scale = ue8m0_value(__ldg(r + a.width + g));
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) c[j] = static_cast<float>(static_cast<int8_t>(__ldg(r + col + j)));
        scale = __ldg(reinterpret_cast<const float*>(r + a.width) + g);
      }
      v = make_float4(c[0] * scale, c[1] * scale, c[2] * scale, c[3] * scale);
    }
    if constexpr (kVec4Out) {
      store4(o, v);
    } else {
      store1(o, v.x), store1(o + 1, v.y), store1(o + 2, v.z), store1(o + 3, v.w);
    }
  }
}

template <bool kFp8, class O>
void launch_quant(const GatherArgs& a, int64_t row_bytes, bool vec4_out, cudaStream_t s) {
  const int64_t items = a.tokens * a.heads * (a.width / 4);
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((items + kThreads - 1) / kThreads, INT32_MAX));
  if (vec4_out) {
    gather_quant_kernel<kFp8, true, O><<<blocks, kThreads, 0, s>>>(a, row_bytes);
  } else {
    gather_quant_kernel<kFp8, false, O><<<blocks, kThreads, 0, s>>>(a, row_bytes);
  }
}

template <bool kBf16, class O>
void launch(const GatherArgs& a, bool vec4, cudaStream_t s) {
  const int64_t items = a.tokens * a.heads * (vec4 ? a.width / 4 : a.width);
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((items + kThreads - 1) / kThreads, INT32_MAX));
  if (vec4) {
    gather_kernel<kBf16, 4, O><<<blocks, kThreads, 0, s>>>(a);
  } else {
    gather_kernel<kBf16, 1, O><<<blocks, kThreads, 0, s>>>(a);
  }
}

template <class O>
void gather_any(O* d_out, const DeviceTable& table, const int32_t* d_ids,
                const int64_t* d_head_offsets, int64_t tokens, int64_t heads, void* stream) {
  const bool quant = table.dtype == DType::kF8E4M3 || table.dtype == DType::kI8;
  if (table.dtype != DType::kF32 && table.dtype != DType::kBF16 && !quant) {
    throw InputError(error_message(
        "gather_rows", "table dtype " + std::string(dtype_name(table.dtype)) +
                           " is not F32, BF16, F8E4M3 or I8"));
  }
  if (quant && table.width % kQuantGroup != 0) {
    throw InputError(error_message(
        "gather_rows", "a " + std::string(dtype_name(table.dtype)) + " table of width " +
                           std::to_string(table.width) + ": quantized rows hold whole groups of " +
                           std::to_string(kQuantGroup) + " values"));
  }
  if (tokens < 0 || heads < 0 || table.rows < 0 || table.width < 0) {
    throw InputError(error_message(
        "gather_rows", "tokens " + std::to_string(tokens) + ", heads " + std::to_string(heads) +
                           ", table rows " + std::to_string(table.rows) + " and width " +
                           std::to_string(table.width) + " must be >= 0"));
  }
  if (tokens == 0 || heads == 0 || table.width == 0) return;
  const auto addr = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
  if (quant) {
    const bool fp8 = table.dtype == DType::kF8E4M3;
    const int64_t groups = table.width / kQuantGroup;
    const int64_t row_bytes = table.width + groups * (fp8 ? 1 : 4);
    if (!fp8 && addr(table.data) % 4 != 0) {
      throw InputError(error_message("gather_rows",
                                     "an I8 table's data must be 4-byte aligned (float scales)"));
    }
    const GatherArgs args{d_out,      table.data,  d_ids,  d_head_offsets,
                          table.rows, table.width, tokens, heads};
    const bool vec4_out = addr(d_out) % (4 * sizeof(O)) == 0;
    const auto s = static_cast<cudaStream_t>(stream);
    if (fp8) {
      launch_quant<true, O>(args, row_bytes, vec4_out, s);
    } else {
      launch_quant<false, O>(args, row_bytes, vec4_out, s);
    }
    ENGRAM_CUDA_CHECK(cudaGetLastError());
    return;
  }
  const bool bf16 = table.dtype == DType::kBF16;
  // 4 values: a 16-byte (f32) or 8-byte (bf16) store and load.
  const bool vec4 = table.width % 4 == 0 && addr(d_out) % (4 * sizeof(O)) == 0 &&
                    addr(table.data) % (bf16 ? 8 : 16) == 0;
  const GatherArgs args{d_out,      table.data,  d_ids,  d_head_offsets,
                        table.rows, table.width, tokens, heads};
  const auto s = static_cast<cudaStream_t>(stream);
  if (bf16) {
    launch<true, O>(args, vec4, s);
  } else {
    launch<false, O>(args, vec4, s);
  }
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

// ---- copy_rows: 16-byte pieces, kCopyUnroll in flight a thread --------------------------

constexpr int kCopyUnroll = 4;

struct CopyArgs {
  uint4* out;             // (tokens * heads * pieces) pieces
  const uint4* table;     // (rows * pieces) pieces
  const int32_t* ids;     // (tokens, heads)
  const int64_t* offsets; // (heads)
  int64_t rows, pieces, tokens, heads;
  uint4 nan;              // a piece of quiet NaNs of the table's dtype
};

// Piece p of the output: row-of-output th = p / pieces (t * heads + h), piece q = p % pieces.
// Consecutive threads take consecutive pieces (a row's pieces are read together); a thread
// takes kCopyUnroll pieces a grid apart, issuing all their loads before its stores.
__global__ void __launch_bounds__(kThreads) copy_rows_kernel(CopyArgs a) {
  const int64_t n = a.tokens * a.heads * a.pieces;
  const int64_t grid = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; base < n;
       base += grid * kCopyUnroll) {
    uint4 v[kCopyUnroll];
#pragma unroll
    for (int k = 0; k < kCopyUnroll; ++k) {
      const int64_t p = base + k * grid;
      if (p >= n) break;
      const int64_t th = p / a.pieces, q = p - th * a.pieces;
      const int32_t id = __ldg(a.ids + th);
      const int64_t row = id + __ldg(a.offsets + th % a.heads);
      v[k] = (id < 0 || row < 0 || row >= a.rows) ? a.nan : a.table[row * a.pieces + q];
    }
#pragma unroll
    for (int k = 0; k < kCopyUnroll; ++k) {
      const int64_t p = base + k * grid;
      if (p >= n) break;
      a.out[p] = v[k];
    }
  }
}

}  // namespace

void copy_rows(void* d_out, const DeviceTable& table, const int32_t* d_ids,
               const int64_t* d_head_offsets, int64_t tokens, int64_t heads, void* stream) {
  const char* where = "copy_rows";
  if (table.dtype != DType::kF32 && table.dtype != DType::kBF16) {
    throw InputError(error_message(
        where, "table dtype " + std::string(dtype_name(table.dtype)) + " is not F32 or BF16"));
  }
  if (tokens < 0 || heads < 0 || table.rows < 0 || table.width < 0) {
    throw InputError(error_message(
        where, "tokens " + std::to_string(tokens) + ", heads " + std::to_string(heads) +
                   ", table rows " + std::to_string(table.rows) + " and width " +
                   std::to_string(table.width) + " must be >= 0"));
  }
  const bool bf16 = table.dtype == DType::kBF16;
  const int64_t row_bytes = table.width * (bf16 ? 2 : 4);
  const auto addr = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
  if (row_bytes % 16 != 0 || addr(d_out) % 16 != 0 || addr(table.data) % 16 != 0) {
    throw InputError(error_message(
        where, "rows of " + std::to_string(row_bytes) +
                   " bytes and the output and table pointers must lie on 16-byte boundaries"));
  }
  if (tokens == 0 || heads == 0 || table.width == 0) return;
  const uint32_t nan_word = bf16 ? 0x7fc07fc0u : 0x7fc00000u;
  const CopyArgs args{static_cast<uint4*>(d_out),
                      static_cast<const uint4*>(table.data),
                      d_ids,
                      d_head_offsets,
                      table.rows,
                      row_bytes / 16,
                      tokens,
                      heads,
                      make_uint4(nan_word, nan_word, nan_word, nan_word)};
  const int64_t n = tokens * heads * (row_bytes / 16);
  const int64_t per_block = int64_t{kThreads} * kCopyUnroll;
  const auto blocks = static_cast<unsigned>(
      std::min<int64_t>((n + per_block - 1) / per_block, INT32_MAX));
  copy_rows_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(args);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

namespace {

// ---- cached_rows: fills, then lookups; U-sized units (16, 4, 2 or 1 bytes) -------------------

template <class U>
__global__ void __launch_bounds__(kThreads)
    cache_fill_kernel(U* slab, const U* table, const int64_t* plan, int64_t n, int64_t units) {
  const int64_t count = plan[0];
  const int64_t* rows = plan + 1 + n;
  const int64_t* slots = rows + count;
  const int64_t total = count * units;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = p / units, q = p - i * units;
    slab[slots[i] * units + q] = table[rows[i] * units + q];
  }
}

template <class U>
__global__ void __launch_bounds__(kThreads)
    cache_lookup_kernel(U* out, const U* slab, const U* table, const int64_t* plan, int64_t n,
                        int64_t units) {
  const int64_t* source = plan + 1;
  const int64_t total = n * units;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = p / units, q = p - i * units;
    const int64_t src = source[i];
    out[p] = src >= 0 ? slab[src * units + q] : table[(-src - 1) * units + q];
  }
}

template <class U>
void launch_cached(void* out, void* slab, const void* table, const int64_t* plan, int64_t n,
                   int64_t row_bytes, cudaStream_t s) {
  const int64_t units = row_bytes / static_cast<int64_t>(sizeof(U));
  // Grids sized for n rows (the most fills a step can have): fixed for a captured graph.
  const auto blocks = static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((n * units + kThreads - 1) / kThreads, 65535)));
  cache_fill_kernel<U><<<blocks, kThreads, 0, s>>>(static_cast<U*>(slab),
                                                   static_cast<const U*>(table), plan, n, units);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  cache_lookup_kernel<U><<<blocks, kThreads, 0, s>>>(static_cast<U*>(out),
                                                     static_cast<const U*>(slab),
                                                     static_cast<const U*>(table), plan, n, units);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

int64_t table_row_bytes(const DeviceTable& table) {
  memory::RowFormat format;
  switch (table.dtype) {
    case DType::kF32:
      format = memory::RowFormat::kF32;
      break;
    case DType::kBF16:
      format = memory::RowFormat::kBF16;
      break;
    case DType::kF8E4M3:
      format = memory::RowFormat::kFP8;
      break;
    case DType::kI8:
      format = memory::RowFormat::kINT8;
      break;
    default:
      throw InputError(error_message("table_row_bytes", "table dtype " +
                                                            std::string(dtype_name(table.dtype)) +
                                                            " is not F32, BF16, F8E4M3 or I8"));
  }
  return memory::row_bytes(format, table.width);
}

void cached_rows(void* d_out, void* d_slab, const DeviceTable& table, const int64_t* d_plan,
                 int64_t n, void* stream) {
  const char* where = "cached_rows";
  if (n < 0) throw InputError(error_message(where, "n " + std::to_string(n) + " is negative"));
  const bool quant = table.dtype == DType::kF8E4M3 || table.dtype == DType::kI8;
  if (table.dtype != DType::kF32 && table.dtype != DType::kBF16 && !quant) {
    throw InputError(error_message(where, "table dtype " + std::string(dtype_name(table.dtype)) +
                                              " is not F32, BF16, F8E4M3 or I8"));
  }
  if (quant && table.width % 32 != 0) {
    throw InputError(error_message(where, "a " + std::string(dtype_name(table.dtype)) +
                                              " table of width " + std::to_string(table.width) +
                                              " (a multiple of 32 needed)"));
  }
  const int64_t row_bytes = table_row_bytes(table);
  if (n == 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  const uintptr_t align = reinterpret_cast<uintptr_t>(d_out) | reinterpret_cast<uintptr_t>(d_slab) |
                          reinterpret_cast<uintptr_t>(table.data) |
                          static_cast<uintptr_t>(row_bytes);
  if (align % 16 == 0) {
    launch_cached<uint4>(d_out, d_slab, table.data, d_plan, n, row_bytes, s);
  } else if (align % 4 == 0) {
    launch_cached<uint32_t>(d_out, d_slab, table.data, d_plan, n, row_bytes, s);
  } else if (align % 2 == 0) {
    launch_cached<uint16_t>(d_out, d_slab, table.data, d_plan, n, row_bytes, s);
  } else {
    launch_cached<uint8_t>(d_out, d_slab, table.data, d_plan, n, row_bytes, s);
  }
}

void gather_rows(float* d_out, const DeviceTable& table, const int32_t* d_ids,
                 const int64_t* d_head_offsets, int64_t tokens, int64_t heads, void* stream) {
  gather_any(d_out, table, d_ids, d_head_offsets, tokens, heads, stream);
}

void gather_rows(bf16* d_out, const DeviceTable& table, const int32_t* d_ids,
                 const int64_t* d_head_offsets, int64_t tokens, int64_t heads, void* stream) {
  gather_any(reinterpret_cast<uint16_t*>(d_out), table, d_ids, d_head_offsets, tokens, heads,
             stream);
}

}  // namespace engram::cuda
