#include "engram/util/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace engram {
namespace {

// A process-wide pool of worker threads, created on first use and grown on demand. Threads
// persist across calls, so per-thread state (such as the tokenizer's word cache) stays warm.
class ThreadPool {
 public:
  static ThreadPool& instance() {
    static ThreadPool pool;
    return pool;
  }

  // Runs task(p) for p in [0, pieces) on the caller plus pieces-1 workers; returns when done.
  void run(size_t pieces, const std::function<void(size_t)>& task) {
    std::unique_lock<std::mutex> lock(mu_);
    while (busy_) idle_cv_.wait(lock);  // one parallel region at a time
    busy_ = true;
    while (workers_.size() < pieces - 1) {
      const size_t index = workers_.size();
      workers_.emplace_back([this, index] { worker_loop(index); });
    }
    task_ = &task;
    pieces_ = pieces;
    remaining_ = pieces - 1;
    ++generation_;
    lock.unlock();
    work_cv_.notify_all();
    task(0);
    lock.lock();
    done_cv_.wait(lock, [&] { return remaining_ == 0; });
    task_ = nullptr;
    busy_ = false;
    lock.unlock();
    idle_cv_.notify_one();
  }

  static bool on_worker() { return is_worker_; }

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  void worker_loop(size_t index) {
    is_worker_ = true;
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      work_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (index + 1 >= pieces_) continue;  // not needed this round
      const auto* task = task_;
      lock.unlock();
      (*task)(index + 1);
      lock.lock();
      if (--remaining_ == 0) done_cv_.notify_one();
    }
  }

  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_, idle_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(size_t)>* task_ = nullptr;
  size_t pieces_ = 0, remaining_ = 0;
  uint64_t generation_ = 0;
  bool busy_ = false, stop_ = false;
  static thread_local bool is_worker_;
};

thread_local bool ThreadPool::is_worker_ = false;

}  // namespace

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

namespace {
std::atomic<int> g_default_threads{0};
}  // namespace

void set_default_threads(int threads) {
  g_default_threads.store(threads < 0 ? 0 : threads);
}

int default_threads() {
  const int t = g_default_threads.load();
  return t > 0 ? t : hardware_threads();
}

void parallel_for(size_t n, int threads, size_t grain,
                  const std::function<void(size_t, size_t)>& fn) {
  if (n == 0) return;
  if (threads <= 0) threads = default_threads();
  grain = std::max<size_t>(grain, 1);
  const size_t pieces = std::min<size_t>(static_cast<size_t>(threads), (n + grain - 1) / grain);
  if (pieces <= 1 || ThreadPool::on_worker()) {  // nested regions run inline
    fn(0, n);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mu;
  ThreadPool::instance().run(pieces, [&](size_t p) {
    try {
      fn(n * p / pieces, n * (p + 1) / pieces);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
    }
  });
  if (error) std::rethrow_exception(error);
}

}  // namespace engram
