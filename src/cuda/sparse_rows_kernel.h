// Sparse row gradients on the GPU (src/cuda/sparse_rows.cu), shared by the Engram layer's table
// gradient and the token embedding's: n slots each carry one row id and one row of values; the
// result is the distinct row ids, ascending, each with the sum of its slots' values taken in
// slot order (a stable radix sort of (row, slot) pairs, a run-length encoding, an exclusive
// scan and a segmented sum: deterministic, no atomics, and the CPU's summation order).
// Plain C++17 types, for .cu and .cpp files alike.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engram/tensor/dtype.h"

namespace engram::cuda::detail {

// A is float or engram::bf16 (the values); sums are float.
template <class A>
struct SparseRowsArgs {
  const int64_t* rows;   // (n) the row of each slot, in [0, 2^end_bit)
  const int32_t* slots;  // (n) 0 .. n-1
  const A* values;       // (n, width): slot i's values at values + i * width
  int64_t n, width;
  int end_bit;             // key bits to sort on
  int64_t* rows_sorted;    // (n) scratch
  int32_t* slots_sorted;   // (n) scratch
  int32_t* counts;         // (n) scratch
  int32_t* starts;         // (n) scratch
  int32_t* num_runs;       // (1) scratch
  void* temp;              // sparse_rows_temp_bytes(n, end_bit) scratch
  size_t temp_bytes;
  int64_t* out_rows;       // (n): the distinct rows, ascending
  float* out_values;       // (n, width): their sums
};

// Scratch bytes for the sort, encoding and scan of n items (n < 2^31).
size_t sparse_rows_temp_bytes(int64_t n, int end_bit);

// Returns the number of distinct rows; waits for `stream` (a cudaStream_t, nullptr = the
// default stream) to read it back. The three calls below, on one stream.
template <class A>
int64_t launch_sparse_rows_sum(const SparseRowsArgs<A>& a, void* stream);

// The parts, enqueued on `stream` without waiting: the plan (sort, run-length encoding into
// out_rows, counts and num_runs, and the runs' starts) needs only rows and slots, so it can run
// on another stream before the values exist; the sums then read the run count on the device.
template <class A>
void launch_sparse_rows_plan(const SparseRowsArgs<A>& a, void* stream);
template <class A>
void launch_sparse_rows_values(const SparseRowsArgs<A>& a, void* stream);
// The number of distinct rows (waits for `stream`).
int64_t read_sparse_rows_count(const int32_t* num_runs, void* stream);

}  // namespace engram::cuda::detail
