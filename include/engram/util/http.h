// A minimal HTTP/1.1 server side over a connected socket: one request in, one response out, then
// the connection closes (`engram serve`). No chunked bodies, no keep-alive, no TLS.
//
//   HttpRequest req = read_http_request(fd, 1 << 20);   // HttpError on a bad request
//   write_http_response(fd, 200, "application/json", body);
//
// read_http_request reads the request line and headers (at most 16 KiB together), then exactly
// Content-Length body bytes (at most max_body). Header names are lower-cased; the target keeps
// its query string. The socket's receive timeout (SO_RCVTIMEO) bounds every read.
#pragma once

#include <cstddef>
#include <map>
#include <stdexcept>
#include <string>

namespace engram {

// A request the server answers with `status` (400, 408, 411, 413, 431, 501, ...) and `what` as
// the error message; status 0: the peer closed or went silent before a request, nothing to say.
class HttpError : public std::runtime_error {
 public:
  HttpError(int status, const std::string& what) : std::runtime_error(what), status_(status) {}
  int status() const { return status_; }

 private:
  int status_;
};

struct HttpRequest {
  std::string method;   // "GET", "POST", ...
  std::string target;   // "/generate", "/health?x=1"
  std::string version;  // "HTTP/1.1"
  std::map<std::string, std::string> headers;  // lower-case names, values trimmed
  std::string body;

  // The target without its query string.
  std::string path() const { return target.substr(0, target.find('?')); }
};

// Reads one request from fd. Throws HttpError as above.
HttpRequest read_http_request(int fd, size_t max_body);

// Writes a whole response with Content-Type, Content-Length and "Connection: close". Returns
// false when the peer is gone (no SIGPIPE is raised).
bool write_http_response(int fd, int status, const std::string& content_type,
                         const std::string& body);

// "OK", "Bad Request", ... ("Unknown" for a status not listed).
const char* http_status_text(int status);

}  // namespace engram
