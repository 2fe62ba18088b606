#include "engram/util/parallel.h"

#include <algorithm>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace engram {

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

void parallel_for(size_t n, int threads, size_t grain,
                  const std::function<void(size_t, size_t)>& fn) {
  if (n == 0) return;
  if (threads <= 0) threads = hardware_threads();
  grain = std::max<size_t>(grain, 1);
  const size_t max_pieces = (n + grain - 1) / grain;
  const size_t pieces = std::min<size_t>(static_cast<size_t>(threads), max_pieces);
  if (pieces <= 1) {
    fn(0, n);
    return;
  }
  std::exception_ptr error;
  std::mutex mu;
  std::vector<std::thread> pool;
  pool.reserve(pieces - 1);
  auto run = [&](size_t p) {
    const size_t begin = n * p / pieces, end = n * (p + 1) / pieces;
    try {
      fn(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!error) error = std::current_exception();
    }
  };
  for (size_t p = 1; p < pieces; ++p) pool.emplace_back(run, p);
  run(0);
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace engram
