// The HTTP/1.1 request reader and response writer (include/engram/util/http.h).
#include "engram/util/http.h"

#include <sys/socket.h>
#include <sys/types.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <string>

namespace engram {
namespace {

constexpr size_t kMaxHead = 16 * 1024;

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

// Appends what the socket has (at most `want` bytes); false at the end of the stream. Throws
// HttpError 408 when the receive timeout expires (0 when nothing at all has arrived).
bool receive(int fd, std::string& buf, size_t want, bool started) {
  char chunk[8192];
  while (true) {
    const ssize_t n = ::recv(fd, chunk, std::min(want, sizeof chunk), 0);
    if (n > 0) {
      buf.append(chunk, static_cast<size_t>(n));
      return true;
    }
    if (n == 0) return false;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      throw HttpError(started ? 408 : 0, "the request did not arrive in time");
    }
    throw HttpError(0, std::string("recv failed: ") + std::to_string(errno));
  }
}

}  // namespace

HttpRequest read_http_request(int fd, size_t max_body) {
  std::string buf;
  size_t head_end = std::string::npos;
  while ((head_end = buf.find("\r\n\r\n")) == std::string::npos) {
    if (buf.size() > kMaxHead) throw HttpError(431, "request line and headers exceed 16 KiB");
    if (!receive(fd, buf, kMaxHead + 4 - buf.size(), !buf.empty())) {
      throw HttpError(buf.empty() ? 0 : 400, "the connection closed inside the request head");
    }
  }
  if (head_end > kMaxHead) throw HttpError(431, "request line and headers exceed 16 KiB");
  HttpRequest req;
  const std::string head = buf.substr(0, head_end);
  std::string body = buf.substr(head_end + 4);
  size_t line_end = head.find("\r\n");
  const std::string request_line = head.substr(0, line_end);
  const size_t sp1 = request_line.find(' ');
  const size_t sp2 = sp1 == std::string::npos ? sp1 : request_line.find(' ', sp1 + 1);
  if (sp1 == std::string::npos || sp2 == std::string::npos || sp1 == 0 || sp2 == sp1 + 1) {
    throw HttpError(400, "malformed request line \"" + request_line.substr(0, 200) + "\"");
  }
  req.method = request_line.substr(0, sp1);
  req.target = request_line.substr(sp1 + 1, sp2 - sp1 - 1);
  req.version = request_line.substr(sp2 + 1);
  if (req.version.rfind("HTTP/1.", 0) != 0) {
    throw HttpError(400, "unsupported protocol \"" + req.version.substr(0, 50) + "\"");
  }
  while (line_end != std::string::npos && line_end < head.size()) {
    const size_t start = line_end + 2;
    line_end = head.find("\r\n", start);
    const std::string line = head.substr(start, line_end == std::string::npos ? std::string::npos
                                                                                : line_end - start);
    if (line.empty()) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos || colon == 0) {
      throw HttpError(400, "malformed header line \"" + line.substr(0, 200) + "\"");
    }
    req.headers[lower(trim(line.substr(0, colon)))] = trim(line.substr(colon + 1));
  }
  if (req.headers.count("transfer-encoding")) {
    throw HttpError(501, "Transfer-Encoding is not supported; send Content-Length");
  }
  size_t length = 0;
  if (const auto it = req.headers.find("content-length"); it != req.headers.end()) {
    const std::string& v = it->second;
    if (v.empty() || v.size() > 18 || !std::all_of(v.begin(), v.end(), ::isdigit)) {
      throw HttpError(400, "Content-Length: \"" + v.substr(0, 50) + "\" is not a length");
    }
    length = std::stoull(v);
  } else if (req.method == "POST" || req.method == "PUT") {
    throw HttpError(411, "a " + req.method + " request needs a Content-Length header");
  }
  if (length > max_body) {
    throw HttpError(413, "the body of " + std::to_string(length) + " bytes exceeds " +
                             std::to_string(max_body));
  }
  while (body.size() < length) {
    if (!receive(fd, body, length - body.size(), true)) {
      throw HttpError(400, "the connection closed after " + std::to_string(body.size()) + " of " +
                               std::to_string(length) + " body bytes");
    }
  }
  body.resize(length);
  req.body = std::move(body);
  return req;
}

const char* http_status_text(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Unknown";
  }
}

bool write_http_response(int fd, int status, const std::string& content_type,
                         const std::string& body) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + http_status_text(status) +
                    "\r\nContent-Type: " + content_type +
                    "\r\nContent-Length: " + std::to_string(body.size()) +
                    "\r\nConnection: close\r\n\r\n" + body;
  size_t sent = 0;
  while (sent < out.size()) {
    const ssize_t n = ::send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace engram
