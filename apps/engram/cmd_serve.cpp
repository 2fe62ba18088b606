// engram serve: a checkpoint behind a small HTTP/1.1 JSON API (cli::Generator, the decoder of
// engram generate). One thread: it accepts connections and reads their requests, queues the
// prompts, and decodes up to --max-batch of them together, one step at a time, answering each
// when it finishes (continuous batching); a connection per request.
//
//   GET  /health    -> {"status": "ok", "device", "model": {...}, "requests": N}
//   POST /generate  {"prompt": TEXT, "max_tokens": N, "temperature": 0.8, "top_k": 0,
//                    "top_p": 0.95, "seed": 0}
//                -> {"text" (the prompt as given + the continuation, what engram generate
//                    prints), "completion", "prompt_tokens", "tokens", "stop", "prefill_ms",
//                    "decode_ms", "tokens_per_s", and with file-tier tables "tables":
//                    {"requested", "unique", "hits", "hit_rate", "bytes_read", "stall_ms"}}
// Errors: {"error": MESSAGE} with 400 (bad JSON, a missing or bad field, named), 404, 405, 408,
// 411, 413 (bodies over 1 MiB), 431, 500, 503 (more than --max-queue prompts waiting). One line
// per request on stderr. SIGINT / SIGTERM stop the server once the prompts in flight are
// answered; --max-requests N stops it after N requests.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <deque>
#include <map>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

#include "args.h"
#include "commands.h"
#include "engt_tables.h"
#include "generation.h"
#include "engram/util/error.h"
#include "engram/util/http.h"
#include "engram/util/parallel.h"
#include "util/json.h"

namespace engram::cli {
namespace {

constexpr size_t kMaxBody = size_t{1} << 20;
std::atomic<bool> g_stop{false};

extern "C" void on_signal(int) {
  g_stop.store(true);
}

// A listening TCP socket, closed on destruction.
class Listener {
 public:
  Listener(const std::string& host, int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw IoError(error_message("serve", "socket: " + std::string(strerror(errno))));
    const int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
      ::close(fd_);
      throw UsageError("--host: \"" + host + "\" is not an IPv4 address");
    }
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(fd_, 64) != 0) {
      const std::string why = strerror(errno);
      ::close(fd_);
      throw IoError(error_message("serve", "cannot listen on " + host + ":" +
                                               std::to_string(port) + ": " + why));
    }
    socklen_t len = sizeof addr;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  ~Listener() { ::close(fd_); }
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  int fd() const { return fd_; }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// A request field's problem: answered with 400 and the message.
[[noreturn]] void bad_field(const std::string& field, const std::string& what) {
  throw HttpError(400, "body: " + field + ": " + what);
}

double number_field(const json::Json& body, const char* name, double fallback) {
  const json::Json* v = json::optional(body, name);
  if (v == nullptr) return fallback;
  if (!v->is_number()) bad_field(name, "expected a number, got " + json::brief(*v));
  return v->get<double>();
}

int64_t int_field(const json::Json& body, const char* name, std::optional<int64_t> fallback,
                  int64_t min) {
  const json::Json* v = json::optional(body, name);
  if (v == nullptr) {
    if (!fallback) bad_field(name, "missing");
    return *fallback;
  }
  if (!v->is_number_integer()) bad_field(name, "expected an integer, got " + json::brief(*v));
  const auto i = v->get<int64_t>();
  if (i < min) bad_field(name, std::to_string(i) + " must be >= " + std::to_string(min));
  return i;
}

GenerateRequest parse_generate(const std::string& text) {
  json::Json body;
  try {
    body = json::parse(text, "body");
  } catch (const FormatError& e) {
    throw HttpError(400, e.what());
  }
  if (!body.is_object()) throw HttpError(400, "body: expected a JSON object");
  GenerateRequest r;
  const json::Json* prompt = json::optional(body, "prompt");
  if (prompt == nullptr) bad_field("prompt", "missing");
  if (!prompt->is_string()) bad_field("prompt", "expected a string, got " + json::brief(*prompt));
  r.prompt = prompt->get<std::string>();
  r.max_tokens = int_field(body, "max_tokens", std::nullopt, 0);
  r.sampling.temperature = number_field(body, "temperature", 0.8);
  if (!std::isfinite(r.sampling.temperature) || r.sampling.temperature < 0)
    bad_field("temperature", json::brief(body["temperature"]) + " must be >= 0");
  r.sampling.top_k = int_field(body, "top_k", 0, 0);
  r.sampling.top_p = number_field(body, "top_p", 0.95);
  if (!(r.sampling.top_p > 0 && r.sampling.top_p <= 1))
    bad_field("top_p", json::brief(body["top_p"]) + " must lie in (0, 1]");
  r.sampling.seed = static_cast<uint64_t>(int_field(body, "seed", 0, 0));
  for (const auto& [key, value] : body.items()) {
    if (key != "prompt" && key != "max_tokens" && key != "temperature" && key != "top_k" &&
        key != "top_p" && key != "seed") {
      bad_field(key, "unknown field");
    }
  }
  return r;
}

json::Json generation_json(const Generation& g, bool file_tier) {
  json::Json out = {{"text", g.text},
                    {"completion", g.completion},
                    {"prompt_tokens", g.prompt_tokens},
                    {"tokens", g.tokens},
                    {"stop", g.stop},
                    {"prefill_ms", g.prefill_seconds * 1e3},
                    {"decode_ms", g.decode_seconds * 1e3},
                    {"tokens_per_s", g.decode_steps > 0 ? static_cast<double>(g.decode_steps) /
                                                              g.decode_seconds
                                                        : 0.0}};
  if (file_tier) {
    out["tables"] = {{"requested", g.rows_requested},
                     {"unique", g.rows_unique},
                     {"hits", g.rows_hit},
                     {"hit_rate", g.rows_unique ? static_cast<double>(g.rows_hit) /
                                                      static_cast<double>(g.rows_unique)
                                                : 0.0},
                     {"bytes_read", g.bytes_read},
                     {"stall_ms", g.stall_seconds * 1e3}};
  }
  return out;
}

// A client waiting for its answer: the connection stays open while its prompt is queued or
// decoding.
struct Client {
  int fd = -1;
  std::string method = "-", target = "-";
  std::chrono::steady_clock::time_point t0;
};

}  // namespace

int run_serve(int argc, char** argv) {
  const Args args(argc, argv, 2,
                  {"ckpt", "tokenizer", "host", "port", "device", "threads", "engram-tables",
                   "tier", "cache-rows", "max-requests", "timeout", "max-batch", "max-queue"},
                  {});
  if (!args.positional().empty())
    throw UsageError("unexpected argument \"" + args.positional().front() + "\"");
  const std::string ckpt = args.required("ckpt");
  const std::string host = args.optional("host").value_or("127.0.0.1");
  const int port = static_cast<int>(args.integer("port", 8080, 0, 65535));
  const int64_t max_requests = args.integer("max-requests", 0, 0, INT64_MAX);
  const int64_t timeout_s = args.integer("timeout", 30, 1, 3600);
  const int64_t max_queue = args.integer("max-queue", 64, 0, 1 << 20);
  set_default_threads(static_cast<int>(args.integer("threads", 0, 0, 4096)));
  GeneratorOptions go;
  go.device = args.optional("device").value_or("cpu");
  const std::optional<std::string> table_paths = args.optional("engram-tables");
  if (!table_paths && (args.has("tier") || args.has("cache-rows")))
    throw UsageError("--tier and --cache-rows need --engram-tables");
  go.tier = args.optional("tier").value_or("");
  go.cache_rows = args.integer("cache-rows", 0, 0, INT64_MAX);
  if (table_paths) go.table_paths = split_commas(*table_paths);
  go.max_batch = args.integer("max-batch", table_paths && go.device == "cpu" ? 1 : 8, 1, 4096);
  Generator generator(ckpt, args.optional("tokenizer").value_or(""), go);
  // Per-request table statistics: the CPU's prefetched file tier (a GPU step serves several
  // requests; its totals go to the summary line).
  const bool file_tier = generator.tier() == "file" && generator.device() != "cuda";
  const model::BackboneConfig& m = generator.loaded().config.model;
  Listener listener(host, port);
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::fprintf(stderr,
               "[serve] listening on http://%s:%d (%s, batches of %lld, %lld layers, vocab %lld)\n",
               host.c_str(), listener.port(), go.device.c_str(),
               static_cast<long long>(go.max_batch), static_cast<long long>(m.num_layers),
               static_cast<long long>(m.vocab_size));
  std::fflush(stderr);

  int64_t accepted = 0, handled = 0;
  std::map<int64_t, Client> running;                      // slot -> its client
  std::deque<std::pair<Client, GenerateRequest>> queued;  // waiting for a slot
  auto respond = [&](Client& c, int status, const std::string& body, const std::string& what) {
    write_http_response(c.fd, status, "application/json", body + "\n");
    ::close(c.fd);
    c.fd = -1;
    ++handled;
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - c.t0).count();
    std::fprintf(stderr, "[serve] %s %s %d %.1f ms%s%s\n", c.method.c_str(), c.target.c_str(),
                 status, ms, what.empty() ? "" : " | ", what.c_str());
    std::fflush(stderr);
  };
  auto fail = [&](Client& c, int status, const std::string& what) {
    respond(c, status, json::Json{{"error", what}}.dump(), what);
  };
  // Reads one request from a new connection and answers it, or queues its prompt.
  auto take = [&](int fd) {
    Client c;
    c.fd = fd;
    c.t0 = std::chrono::steady_clock::now();
    timeval tv{static_cast<time_t>(timeout_s), 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    try {
      const HttpRequest req = read_http_request(fd, kMaxBody);
      ++accepted;
      c.method = req.method;
      c.target = req.target;
      const std::string path = req.path();
      if (path == "/health") {
        if (req.method != "GET") throw HttpError(405, "use GET " + path);
        const json::Json body = {{"status", "ok"},
                                 {"device", go.device},
                                 {"requests", handled},
                                 {"running", static_cast<int64_t>(running.size())},
                                 {"queued", static_cast<int64_t>(queued.size())},
                                 {"max_batch", go.max_batch},
                                 {"model",
                                  {{"num_layers", m.num_layers},
                                   {"hidden_size", m.hidden_size},
                                   {"vocab_size", m.vocab_size},
                                   {"max_seq_len", m.max_seq_len}}}};
        respond(c, 200, body.dump(), "");
      } else if (path == "/generate") {
        if (req.method != "POST") throw HttpError(405, "use POST " + path);
        GenerateRequest r = parse_generate(req.body);
        if (static_cast<int64_t>(queued.size()) >= max_queue && !generator.has_free_slot()) {
          throw HttpError(503, "busy: " + std::to_string(queued.size()) +
                                   " requests are waiting (--max-queue)");
        }
        queued.emplace_back(c, std::move(r));
      } else {
        throw HttpError(404, "no route " + req.method + " " + path +
                                 " (GET /health, POST /generate)");
      }
    } catch (const HttpError& e) {
      if (e.status() == 0) {  // nothing arrived: no answer, not counted
        ::close(fd);
        return;
      }
      if (c.method == "-") ++accepted;
      fail(c, e.status(), e.what());
    } catch (const std::exception& e) {  // anything else: this request fails, the server goes on
      if (c.method == "-") ++accepted;
      fail(c, 500, e.what());
    }
  };

  while (true) {
    const bool accepting = !g_stop.load() && (max_requests == 0 || accepted < max_requests);
    if (!accepting && running.empty() && queued.empty()) break;
    if (accepting) {
      pollfd p{listener.fd(), POLLIN, 0};
      const bool work = generator.busy() || !queued.empty();
      if (::poll(&p, 1, work ? 0 : 200) > 0) {
        const int fd = ::accept4(listener.fd(), nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) take(fd);
      }
    }
    while (!queued.empty() && generator.has_free_slot()) {
      auto [client, request] = std::move(queued.front());
      queued.pop_front();
      try {
        running[generator.start(request)] = client;
      } catch (const InputError& e) {
        fail(client, 400, std::string("body: ") + e.what());
      }
    }
    if (!generator.busy()) continue;
    try {
      for (auto& [slot, g] : generator.step()) {
        Client& c = running.at(slot);
        respond(c, 200, generation_json(g, file_tier).dump(),
                std::to_string(g.tokens) + " tokens (" + g.stop + ")");
        running.erase(slot);
      }
    } catch (const std::exception& e) {  // the generator dropped every prompt in flight
      for (auto& [slot, c] : running) fail(c, 500, e.what());
      running.clear();
    }
  }
  std::fprintf(stderr, "[serve] stopped after %lld requests\n", static_cast<long long>(handled));
  return 0;
}

}  // namespace engram::cli
