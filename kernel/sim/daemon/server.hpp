// The keepalive-simd server: one simulated host (platform + sim kernel)
// served over the wire protocol (wire.hpp) to many connections, one thread
// per connection. Used by the keepalive-simd executable and, in-process, by
// the transport tests.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kernel.hpp"
#include "keepalive/error.hpp"
#include "platform.hpp"

namespace keepalive::simd {

struct server_config {
  std::string socket_path;
  std::uint64_t phys_mib = 1088;  // 64 MiB kernel + 1 GiB guest RAM; sparse
  unsigned nics = 1;
  sim::kernel_mode mode = sim::kernel_mode::keepalive;
  bool posted_interrupts = true;
};

class server {
 public:
  // Boots the platform and the kernel and listens on the socket (a stale
  // socket file nobody answers on is replaced; a live one is EBUSY).
  static result<std::unique_ptr<server>> start(const server_config& cfg);
  // Stops serving, drops every connection, shuts the kernel down, removes the socket file.
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  // Accepts and serves until stop(); returns once every connection is closed.
  void run();
  // Any thread (not from a signal handler).
  void stop() noexcept;

  [[nodiscard]] const std::string& socket_path() const noexcept;
  [[nodiscard]] sim::platform& hardware() noexcept;
  [[nodiscard]] std::size_t live_connections() const;

  struct state;

 private:
  explicit server(std::unique_ptr<state> s);
  std::unique_ptr<state> s_;
};

}  // namespace keepalive::simd
