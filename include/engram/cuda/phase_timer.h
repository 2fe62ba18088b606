// Device time of the phases of a piece of GPU work, from CUDA events recorded on a stream (the
// default one unless set_stream says otherwise) between the phases' launches (GpuEngramLayer's and GpuDecoder's profiling).
//
//   cuda::PhaseTimer t;
//   t.start();                 // a new list; records the first event
//   ...launch phase A...; t.mark("A");
//   ...launch phase B...; t.mark("B");
//   for (auto& [name, ms] : t.times()) ...   // waits for the last event
//
// Events are created on first use and reused; recording one costs a few microseconds of host
// time. A build without CUDA has the class; start() and mark() then throw engram::Error.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace engram::cuda {

class PhaseTimer {
 public:
  PhaseTimer() = default;
  ~PhaseTimer();
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;

  // The stream the events are recorded on (a cudaStream_t; nullptr, the default: the default
  // stream).
  void set_stream(void* stream) { stream_ = stream; }
  // Starts a new list of phases (records the opening event).
  void start();
  // Closes phase `name`: the device time from the previous event to this one.
  void mark(const std::string& name);
  // Every phase since start(), in order, with its milliseconds (waits for the device to reach the
  // last event). Empty before start().
  std::vector<std::pair<std::string, float>> times() const;

 private:
  void record(size_t i);
  std::vector<void*> events_;       // cudaEvent_t
  std::vector<std::string> names_;  // names_[0] = "start"; events_[i] closes names_[i]
  void* stream_ = nullptr;
};

}  // namespace engram::cuda
