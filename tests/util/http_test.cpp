// read_http_request / write_http_response over a socketpair: well-formed requests (a body in
// pieces, header names lower-cased, the query kept), each rejected kind with its status (400,
// 408, 411, 413, 431, 501; 0 when nothing arrived), the response's framing, and a write to a
// closed peer (false, no SIGPIPE).
#include "engram/util/http.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <string>
#include <thread>

namespace engram {
namespace {

struct Pair {
  int a = -1, b = -1;  // a: the client's end, b: the server's
  Pair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    a = fds[0];
    b = fds[1];
    timeval tv{0, 300000};  // 0.3 s receive timeout on the server's end
    ::setsockopt(b, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~Pair() {
    if (a >= 0) ::close(a);
    if (b >= 0) ::close(b);
  }
  void send(const std::string& s) const {
    ASSERT_EQ(::write(a, s.data(), s.size()), static_cast<ssize_t>(s.size()));
  }
  void close_client() {
    ::close(a);
    a = -1;
  }
};

int status_of(Pair& p, size_t max_body = 1024) {
  try {
    read_http_request(p.b, max_body);
  } catch (const HttpError& e) {
    return e.status();
  }
  return 200;
}

TEST(Http, ReadsARequestWithABodyInPieces) {
  Pair p;
  std::thread writer([&] {
    p.send("POST /generate?x=1 HTTP/1.1\r\nHost: here\r\nContent-Type:  application/json \r\n");
    p.send("Content-Length: 12\r\n\r\n{\"a\":");
    p.send(" 12345}");
  });
  const HttpRequest r = read_http_request(p.b, 1024);
  writer.join();
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.target, "/generate?x=1");
  EXPECT_EQ(r.path(), "/generate");
  EXPECT_EQ(r.version, "HTTP/1.1");
  EXPECT_EQ(r.headers.at("content-type"), "application/json");
  EXPECT_EQ(r.headers.at("host"), "here");
  EXPECT_EQ(r.body, "{\"a\": 12345}");
}

TEST(Http, AGetNeedsNoLength) {
  Pair p;
  p.send("GET /health HTTP/1.0\r\n\r\n");
  const HttpRequest r = read_http_request(p.b, 0);
  EXPECT_EQ(r.method, "GET");
  EXPECT_EQ(r.body, "");
}

TEST(Http, BadRequestsGetTheirStatus) {
  struct Case {
    const char* request;
    int status;
  };
  const Case cases[] = {
      {"NONSENSE\r\n\r\n", 400},
      {"GET / SPDY/3\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nContent-Length: 12x\r\n\r\n", 400},
      {"POST /generate HTTP/1.1\r\n\r\n", 411},
      {"POST / HTTP/1.1\r\nContent-Length: 2048\r\n\r\n", 413},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501},
      {"GET / HTT", 408},  // the head stopped arriving
      {"", 0},             // nothing arrived in time: no answer
  };
  for (const Case& c : cases) {
    Pair p;
    if (*c.request != '\0') p.send(c.request);
    EXPECT_EQ(status_of(p, 1024), c.status) << c.request;
  }
  {
    Pair p;
    std::thread writer([&] { p.send("GET / HTTP/1.1\r\nX: " + std::string(20000, 'a')); });
    EXPECT_EQ(status_of(p), 431);
    writer.join();
  }
  {
    Pair p;
    p.send("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    p.close_client();
    EXPECT_EQ(status_of(p), 400);  // the body ended early
  }
  {
    Pair p;
    p.close_client();
    EXPECT_EQ(status_of(p), 0);  // closed before a request
  }
}

TEST(Http, WritesAFramedResponse) {
  Pair p;
  ASSERT_TRUE(write_http_response(p.b, 404, "application/json", "{\"error\":\"x\"}"));
  char buf[512];
  const ssize_t n = ::read(p.a, buf, sizeof buf);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)),
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 13\r\n"
            "Connection: close\r\n\r\n{\"error\":\"x\"}");
  EXPECT_STREQ(http_status_text(413), "Content Too Large");
  EXPECT_STREQ(http_status_text(299), "Unknown");
  p.close_client();
  EXPECT_FALSE(write_http_response(p.b, 200, "text/plain", std::string(1 << 20, 'x')));
}

}  // namespace
}  // namespace engram
