// Row gather for Engram tables on the GPU: the `e` of the Engram layer (ENGRAM_SPEC §3), as
// src/nn/engram_layer.cpp forms it on the CPU from a memory::RowStore.
//
// For hash ids (tokens, H) and per-head row offsets (H):
//   out[t, h*w .. h*w + w) = table[offsets[h] + ids[t, h], 0 .. w)          out is (tokens, H*w)
// Tables of F32 or BF16 rows, or of the memory tier's quantized rows (memory/row_format.h),
// dequantized in the gather: F8E4M3 (width FP8 E4M3FN codes, then width/32 UE8M0 scale bytes:
// DeepSeek-V4.1's layout) or I8 (width int8 codes, then width/32 float32 scales), each value
// code * scale in float, exactly what memory::decode_rows gives (NaN codes and scales give NaN,
// whose payload bits may differ; exact with denormals on, i.e. without -ftz / fast math). out is f32 (bf16 values are
// widened exactly) or bf16 (bf16 rows copied bit for bit, others rounded to nearest even; an fp8
// value is exact in bf16 unless its scale puts it below 2^-133). Rows are copied 4 values per
// thread (16-byte stores, 16- or 8-byte loads) when the width is a multiple of 4 and the pointers
// are aligned for it, one value per thread otherwise (quantized rows: 4 values a thread always).
#pragma once

#include <cstdint>

#include "engram/tensor/dtype.h"

namespace engram::cuda {

// A table the device can read (device memory, or mapped pinned host memory): rows of `width`
// values of `dtype`, row-major, back to back. kF32 and kBF16 rows hold plain values; kF8E4M3 and
// kI8 rows are memory::RowFormat::kFP8 and kINT8 rows (width + width/32 and width + 4 width/32
// bytes; width a multiple of 32; I8 data 4-byte aligned).
struct DeviceTable {
  const void* data = nullptr;
  DType dtype = DType::kF32;  // kF32, kBF16, kF8E4M3 or kI8
  int64_t rows = 0;
  int64_t width = 0;
};

// d_out: (tokens, heads * table.width) f32; d_ids: (tokens, heads) int32 per-head ids (the
// GpuNgramHasher's output for one layer); d_head_offsets: (heads) int64, the first row of each
// head (NgramHasher::head_offsets). All device pointers. Launched on `stream` (a cudaStream_t;
// nullptr = the default stream), asynchronously.
// Precondition: offsets[h] + ids[t, h] names a row of head h. The kernel checks only that the
// read stays inside the table: an id < 0 or a row >= table.rows gives a row of NaN.
// Throws InputError for another dtype, a negative size, a quantized table whose width is not a
// multiple of 32 or an I8 table off the 4-byte grid; engram::Error on a launch failure.
void gather_rows(float* d_out, const DeviceTable& table, const int32_t* d_ids,
                 const int64_t* d_head_offsets, int64_t tokens, int64_t heads,
                 void* stream = nullptr);
// The same into a bf16 output (the Engram layer's bf16 activations).
void gather_rows(bf16* d_out, const DeviceTable& table, const int32_t* d_ids,
                 const int64_t* d_head_offsets, int64_t tokens, int64_t heads,
                 void* stream = nullptr);

// The same rows copied bit for bit into an output of the table's own dtype (f32 rows to f32,
// bf16 rows to bf16): out[t, h*w .. h*w + w) = table[offsets[h] + ids[t, h]]. Rows move as
// 16-byte pieces with plain loads, several pieces in flight a thread: the gather for a table in
// pinned, mapped host memory read over PCIe (DeviceTable.data = MappedHostBuffer::device(),
// include/engram/cuda/buffer.h), and as good as gather_rows in device memory.
// Requires row bytes (width * element size) % 16 == 0 and 16-byte-aligned d_out and table data;
// an id < 0 or a row >= table.rows gives a row of NaN, as gather_rows. Throws InputError for
// another dtype, a negative size, or rows and pointers off the 16-byte grid; engram::Error on a
// launch failure.
void copy_rows(void* d_out, const DeviceTable& table, const int32_t* d_ids,
               const int64_t* d_head_offsets, int64_t tokens, int64_t heads,
               void* stream = nullptr);

// Bytes of one row of `table` as stored: memory::row_bytes of its format (f32 4 w, bf16 2 w, fp8
// w + w/32, int8 w + 4 w/32; ConfigError for a width that format refuses). InputError for
// another dtype.
int64_t table_row_bytes(const DeviceTable& table);

// One step's rows through a cache of rows in GPU memory (infer::GpuDecoder's hot rows; the
// bookkeeping is memory::plan_lookups'), copied bit for bit as stored (any dtype). d_plan is
// int64 [c | source (n) | fill rows (c) | fill slots (c)], c the fill count (read on the device,
// so a captured graph replays with a new plan): first
//   slab[fill slot i] = table[fill row i]                                   for i < c
// then
//   out[i] = source[i] >= 0 ? slab[source[i]] : table[-source[i] - 1]       for i < n,
// each row table_row_bytes(table) bytes. d_out, d_slab, d_plan: device memory; the table: device
// or mapped host memory. Rows move in the widest of 16, 4, 2 or 1 bytes that divides the row size
// and every pointer's alignment. Unchecked: sources and fills naming real rows and slots. Throws
// InputError for n < 0, a table of another dtype or a quantized width not a multiple of 32;
// engram::Error on a launch failure.
void cached_rows(void* d_out, void* d_slab, const DeviceTable& table, const int64_t* d_plan,
                 int64_t n, void* stream = nullptr);

}  // namespace engram::cuda
