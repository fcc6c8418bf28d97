#include "qmp.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include <fmt/format.h>

namespace keepalive::minivmm {
namespace {

constexpr const char* greeting = R"({"QMP":{"version":{"package":"minivmm"},"capabilities":[]}})";
constexpr std::size_t max_line = 64 * 1024;

bool write_all(int fd, std::string_view s) {
  while (!s.empty()) {
    const ssize_t n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    s.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Reads one line (without '\n') into `line`, keeping what follows in `buf`.
// false on EOF, error, timeout or an over-long line.
bool read_line(int fd, std::string& buf, std::string& line, int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds{timeout_ms};
  for (;;) {
    if (const auto nl = buf.find('\n'); nl != std::string::npos) {
      line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      return true;
    }
    if (buf.size() > max_line) return false;
    int wait = -1;
    if (timeout_ms >= 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      wait = static_cast<int>(left.count());
    }
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, wait);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    char chunk[4096];
    const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buf.append(chunk, static_cast<std::size_t>(n));
  }
}

result<sockaddr_un> address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path) return error{errc::invalid, "socket path length"};
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

}  // namespace

std::string qmp_return(const std::string& body) { return "{\"return\":{" + body + "}}"; }

std::string qmp_error(const std::string& cls, const std::string& desc) {
  return fmt::format("{{\"error\":{{\"class\":{},\"desc\":{}}}}}", json::quote(cls), json::quote(desc));
}

result<std::unique_ptr<qmp_server>> qmp_server::listen(const std::string& path) {
  auto a = address(path);
  if (!a) return a.err();
  unique_fd fd{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  if (!fd.valid()) return error{errc_from_errno(errno), "qmp socket"};
  ::unlink(path.c_str());
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*a), sizeof *a) != 0)
    return error{errc_from_errno(errno), "bind " + path};
  if (::listen(fd.get(), 16) != 0) return error{errc_from_errno(errno), "listen " + path};
  return std::unique_ptr<qmp_server>{new qmp_server{std::move(fd), path}};
}

std::unique_ptr<qmp_server> qmp_server::adopt(int fd, std::string path) {
  (void)::fcntl(fd, F_SETFD, FD_CLOEXEC);
  return std::unique_ptr<qmp_server>{new qmp_server{unique_fd{fd}, std::move(path)}};
}

qmp_server::~qmp_server() {
  stop();
  if (!keep_path_ && !path_.empty() && listen_.valid()) ::unlink(path_.c_str());
}

void qmp_server::start(handler h) {
  handler_ = std::move(h);
  if (::pipe2(stop_pipe_, O_CLOEXEC) != 0) return;
  thread_ = std::thread{[this] { loop(); }};
}

void qmp_server::stop() {
  if (thread_.joinable()) {
    if (std::this_thread::get_id() == thread_.get_id()) {
      thread_.detach();
    } else {
      const char b = 0;
      (void)!::write(stop_pipe_[1], &b, 1);
      thread_.join();
    }
  }
  for (int& p : stop_pipe_)
    if (p >= 0) ::close(std::exchange(p, -1));
}

int qmp_server::release_for_exec() {
  keep_path_ = true;
  const int fd = listen_.get();
  (void)::fcntl(fd, F_SETFD, 0);
  return fd;
}

void qmp_server::loop() {
  for (;;) {
    pollfd p[2] = {{listen_.get(), POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
    const int r = ::poll(p, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || (p[1].revents & POLLIN)) return;
    if (!(p[0].revents & POLLIN)) continue;
    const int c = ::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    serve_client(c);
  }
}

void qmp_server::serve_client(int c) {
  std::string buf, line;
  bool open = write_all(c, std::string{greeting} + "\n");
  while (open && read_line(c, buf, line, -1)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    qmp_reply rep;
    auto req = json::parse(line);
    const std::string* cmd = req ? json::find(*req, "execute") : nullptr;
    if (!req)
      rep.line = qmp_error("GenericError", "JSON parse error");
    else if (!cmd)
      rep.line = qmp_error("GenericError", "expected {\"execute\":...}");
    else if (*cmd == "qmp_capabilities")
      rep.line = qmp_return();
    else
      rep = handler_(*req);
    open = write_all(c, rep.line + "\n");
    if (rep.after) {
      ::close(c);
      rep.after();
      return;
    }
  }
  ::close(c);
}

result<std::string> qmp_call(const std::string& path, const std::string& request, int timeout_ms) {
  auto a = address(path);
  if (!a) return a.err();
  unique_fd fd{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  if (!fd.valid()) return error{errc_from_errno(errno), "socket"};
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*a), sizeof *a) != 0)
    return error{errc_from_errno(errno), "connect " + path};
  std::string buf, line;
  if (!read_line(fd.get(), buf, line, timeout_ms)) return error{errc::again, "no QMP greeting"};
  if (!write_all(fd.get(), request + "\n")) return error{errc::io, "send"};
  if (!read_line(fd.get(), buf, line, timeout_ms)) return error{errc::again, "no QMP reply"};
  return line;
}

}  // namespace keepalive::minivmm
