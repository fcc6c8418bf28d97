// The guest test program's scenarios and its report format: one line per
// observation, "KA: <scenario>.<key>=<value>", parsed by kernel/linux/test.sh.
#pragma once

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

#include <fmt/format.h>

#include "keepalive/abi/ops.hpp"
#include "keepalive/types.hpp"
#include "vfio_edu.hpp"

namespace ka_guest {

template <typename V>
void report(std::string_view scenario, std::string_view key, const V& value) {
  fmt::print("KA: {}.{}={}\n", scenario, key, value);
}
inline std::string hex(std::uint64_t v) { return fmt::format("{:#x}", v); }
// -errno of a failed keepalive::abi call, 0 on success (the report's convention).
template <typename R>
int rc_of(const R& r) {
  return r ? 0 : -r.err().errno_value();
}
// Reports "<key>_failed=<rc>" and returns 1 (a child's exit status).
inline int fail(std::string_view scenario, std::string_view key, int rc = -1) {
  report(scenario, fmt::format("{}_failed", key), rc);
  return 1;
}

// Runs body() in a forked child (a VMM that exits or dies with the device in
// whatever state it left it) and reports "<scenario>.<who>_exit=<status>"
// (128 + signal when killed). Returns that status.
template <typename F>
int run_child(std::string_view scenario, std::string_view who, F&& body) {
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {
    const int rc = body();
    std::fflush(stdout);
    _exit(rc);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  const int rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  report(scenario, fmt::format("{}_exit", who), rc);
  return rc;
}

// DMA payloads: byte i of pattern `seed`.
inline std::uint8_t pattern(std::size_t i, unsigned seed) {
  return static_cast<std::uint8_t>(i * 7 + seed * 31 + 0x5a);
}
inline void fill_pattern(std::uint8_t* p, std::size_t n, unsigned seed) {
  for (std::size_t i = 0; i < n; ++i) p[i] = pattern(i, seed);
}
inline bool holds_pattern(const std::uint8_t* p, std::size_t n, unsigned seed) {
  for (std::size_t i = 0; i < n; ++i)
    if (p[i] != pattern(i, seed)) return false;
  return true;
}
// The one device the control node lists, once listed (and, if `latched`,
// once its interrupt is latched); polls for up to 3 s. State RUNNING (0) and
// nothing pending if no single device was listed.
keepalive::abi::device_entry wait_listed(bool latched);

// Writes a sysfs/debugfs attribute; false if it could not be written.
inline bool write_sysfs(const std::string& path, const std::string& value) {
  std::ofstream out{path};
  out << value;
  out.flush();
  return static_cast<bool>(out);
}

// A distinct, reproducible keepalive token per `first` (the same in both kernels of a kexec).
inline keepalive::token make_token(std::uint8_t first) {
  keepalive::token::bytes b{};
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::uint8_t>(first + i * 17);
  return keepalive::token{b};
}

// A new owner dying before LEAVE: it takes the interrupt latched for it,
// starts a DMA with an interrupt into `dst` (cleared first, at `dst_iova`)
// and is killed. Reports "<who>_set_msi" and "<who>_irq_delivered".
[[noreturn]] void take_irq_and_die_mid_dma(std::string_view scenario, std::string_view who, const vfio_edu& v,
                                           std::uint8_t* dst, std::uint64_t dst_iova);

// patched: the kernel has the keepalive patches (else: baseline expectations).
int run_stage1(bool patched, bool fidelity);
int run_conformance();
int run_unowned_fault();
int run_unbind();
int run_cdev();
// Stage 2: before the kexec (prepares and reboots) or after it (reclaims).
int run_stage2(bool after_kexec);
// stage2x, kernel 1, 2 or 3: a corrupted handover refused; RESET_DEVICE of a RESTORED device.
int run_stage2x(int kernel);
// Reads Linux's own VT-d tables from /dev/mem and checks them against debugfs
// and against the buffer mapped at iova (its pages' physical addresses).
int run_fidelity(const edu_location& loc, const std::uint8_t* buf, std::uint64_t iova, std::size_t bytes);

}  // namespace ka_guest
