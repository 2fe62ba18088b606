// A CUDA stream of one's own, events between streams, a gate that holds a stream until the host
// opens it, and CUDA graphs captured on a stream: a fixed sequence of launches recorded once and
// replayed with one call (infer::GpuDecoder's decode steps).
//
//   cuda::Stream s;                          // a blocking stream: ordered with the default stream
//   cuda::Graph g;
//   g.begin_capture(s);  ...enqueue work on s.get()...;  g.end_capture(s);   // instantiated
//   g.launch(s);                             // the same launches, the same pointers, new data
//
// Capture records launches instead of running them: nothing may wait for the device, allocate
// or touch the default stream meanwhile (a CUDA error names the call that did). A failed
// capture leaves the graph empty. A build without CUDA has the classes; their calls throw
// engram::Error("... built without CUDA").
#pragma once

namespace engram::cuda {

class Stream {
 public:
  // non_blocking: not ordered with the legacy default stream (cudaStreamNonBlocking); order it
  // with events.
  explicit Stream(bool non_blocking = false);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  void* get() const { return stream_; }  // cudaStream_t
  void synchronize() const;

 private:
  void* stream_ = nullptr;
};

// A CUDA event for ordering work across streams (a fork and join inside a captured graph too).
class Event {
 public:
  Event();
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(const Stream& s);           // marks the point reached by s's work so far
  void wait(const Stream& s) const;       // s's later work waits for that point
  // The same on a raw cudaStream_t (nullptr: the legacy default stream).
  void record(void* stream);
  void wait(void* stream) const;

 private:
  void* event_ = nullptr;  // cudaEvent_t
};

// A point in a stream's work that waits for the host: wait(s) enqueues a one-thread kernel
// (so it can be captured in a graph) that spins, with a short sleep, until the host has called
// open(); close() shuts the gate again for the next round. The host's writes to pinned host
// memory made before open() are visible to the work after the wait. It lets a stream run
// ahead while the host prepares what a later part of it reads (infer::GpuDecoder's file tier:
// the first layers run while the host gathers the Engram rows). Call close() only when no wait
// is pending on the device; every wait enqueued must be followed by open(), or the stream never
// finishes (open() in every path, an exception's included).
class HostGate {
 public:
  HostGate();  // open
  ~HostGate();
  HostGate(const HostGate&) = delete;
  HostGate& operator=(const HostGate&) = delete;

  void close();
  void open();
  void wait(void* stream) const;  // a cudaStream_t (nullptr: the legacy default stream)

 private:
  int* host_ = nullptr;          // pinned, mapped: 0 closed, 1 open
  const int* device_ = nullptr;  // its device address
};

class Graph {
 public:
  Graph() = default;
  ~Graph();
  Graph(Graph&& other) noexcept;
  Graph& operator=(Graph&& other) noexcept;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  void begin_capture(const Stream& s);
  // Ends the capture and instantiates the graph (replacing any earlier one).
  void end_capture(const Stream& s);
  void launch(const Stream& s) const;
  bool empty() const { return exec_ == nullptr; }

 private:
  void reset();
  void* graph_ = nullptr;  // cudaGraph_t
  void* exec_ = nullptr;   // cudaGraphExec_t
};

}  // namespace engram::cuda
