#include "kernel.hpp"

#include "core.hpp"

namespace keepalive::sim {

kernel::kernel(platform& plat, const kernel_config& cfg)
    : plat_{plat}, cfg_{cfg}, core_{std::make_shared<kernel_core>(plat, cfg)} {}

result<std::unique_ptr<kernel>> kernel::boot(platform& plat, const kernel_config& cfg) {
  if (cfg.map.kernel_end % (2u << 20) || cfg.map.kernel_end < (16u << 20) || cfg.map.kernel_end >= plat.memory().size())
    return {errc::invalid, "kernel region must be 2 MiB aligned, >= 16 MiB and leave room for guests"};
  std::unique_ptr<kernel> k{new kernel{plat, cfg}};
  if (auto st = k->core_->boot(); !st) return st.err();
  return k;
}

kernel::~kernel() {
  if (core_) core_->shutdown();
}

std::shared_ptr<process> kernel::spawn(std::string name) {
  return std::make_shared<process>(core_, std::move(name));
}

kernel_stats kernel::stats() const { return core_->stats(); }
std::string kernel::describe() const { return core_->describe(); }

result<std::unique_ptr<kernel>> kexec(std::unique_ptr<kernel> old) {
  platform& plat = old->hardware();
  const kernel_config cfg = old->config();
  old.reset();
  return kernel::boot(plat, cfg);
}

process::process(std::weak_ptr<kernel_core> core, std::string name) : core_{std::move(core)}, name_{std::move(name)} {
  if (auto c = core_.lock()) pid_ = c->new_process();
}

process::~process() { exit(); }

void process::exit() {
  if (auto c = core_.lock()) c->exit_process(pid_);
  core_.reset();
}

long process::ioctl(int fd, unsigned long cmd, void* arg) {
  auto c = core_.lock();
  return c ? c->ioctl(pid_, fd, cmd, arg) : -EIO;
}

result<int> process::open(std::string_view path, int) {
  auto c = core_.lock();
  if (!c) return {errc::io, "host kernel is gone"};
  return c->open(pid_, path);
}

errc process::close(int fd) {
  auto c = core_.lock();
  return c ? c->close(pid_, fd) : errc::io;
}

result<std::size_t> process::pread(int fd, std::span<std::byte> out, std::uint64_t offset) {
  auto c = core_.lock();
  if (!c) return {errc::io, "host kernel is gone"};
  return c->rw(pid_, fd, out, offset, false);
}

result<std::size_t> process::pwrite(int fd, std::span<const std::byte> in, std::uint64_t offset) {
  auto c = core_.lock();
  if (!c) return {errc::io, "host kernel is gone"};
  return c->rw(pid_, fd, std::span<std::byte>{const_cast<std::byte*>(in.data()), in.size()}, offset, true);
}

}  // namespace keepalive::sim
