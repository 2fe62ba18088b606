// Splitting a range of independent work items over threads.
#pragma once

#include <cstddef>
#include <functional>

namespace engram {

// Number of hardware threads (at least 1).
int hardware_threads();

// The thread count that `threads = 0` means: hardware_threads() unless set (0 restores that).
void set_default_threads(int threads);
int default_threads();

// Calls fn(begin, end) on contiguous pieces of [0, n) from up to `threads` threads (0 =
// default_threads()) and returns when all are done. Pieces are at least `grain` items long.
// The first exception thrown by any piece is rethrown in the caller after all pieces finish.
// Work runs on a persistent process-wide pool (per-thread caches stay warm between calls);
// a parallel_for inside a piece runs inline.
void parallel_for(size_t n, int threads, size_t grain,
                  const std::function<void(size_t begin, size_t end)>& fn);

}  // namespace engram
