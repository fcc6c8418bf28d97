// A QMP-like control socket: a Unix stream socket, newline-delimited JSON.
// On connect the server sends {"QMP":{...}}; each request line
// {"execute":NAME[,"arguments":{...}]} gets one reply line, {"return":{...}}
// or {"error":{"class":...,"desc":...}}. One client at a time; the handler
// runs on the server's thread.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "keepalive/detail/json.hpp"
#include "keepalive/error.hpp"
#include "unique_fd.hpp"

namespace keepalive::minivmm {

namespace json = keepalive::detail::json;

struct qmp_reply {
  std::string line;             // the JSON reply (no newline)
  std::function<void()> after;  // runs once the reply is sent and the client closed (exec, exit)
};

[[nodiscard]] std::string qmp_return(const std::string& object_body = {});  // {"return":{BODY}}
[[nodiscard]] std::string qmp_error(const std::string& cls, const std::string& desc);

class qmp_server {
 public:
  using handler = std::function<qmp_reply(const json::rows& request)>;

  // Binds PATH (replacing a stale socket), close-on-exec.
  static result<std::unique_ptr<qmp_server>> listen(const std::string& path);
  // A listening socket inherited across exec.
  static std::unique_ptr<qmp_server> adopt(int fd, std::string path);
  ~qmp_server();
  qmp_server(const qmp_server&) = delete;
  qmp_server& operator=(const qmp_server&) = delete;

  void start(handler h);
  void stop();
  [[nodiscard]] int fd() const noexcept { return listen_.get(); }
  [[nodiscard]] const std::string& path() const noexcept { return path_; }
  // Keep the socket open across exec (clears FD_CLOEXEC) and stop serving.
  [[nodiscard]] int release_for_exec();

 private:
  qmp_server(unique_fd fd, std::string path) : listen_{std::move(fd)}, path_{std::move(path)} {}
  void loop();
  void serve_client(int c);

  unique_fd listen_;
  std::string path_;
  handler handler_;
  std::thread thread_;
  int stop_pipe_[2] = {-1, -1};
  bool keep_path_ = false;
};

// Client: connects, reads the greeting, sends `request`, returns the reply line.
[[nodiscard]] result<std::string> qmp_call(const std::string& path, const std::string& request, int timeout_ms);

}  // namespace keepalive::minivmm
