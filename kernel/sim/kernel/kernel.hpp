// The sim kernel: the kernel half of uapi/linux/vfio_keepalive.h plus the VFIO
// subset it needs (real <linux/vfio.h> structs), the Intel IOMMU and
// interrupt-remapping driver parts, and KVM's side of posted interrupts — in
// userspace, over the simulated platform. It writes tables as Linux does; the
// platform reads them as hardware does.
//
// Lifetime: a kernel is booted on a platform; VMMs are `process`es with their
// own fd tables; destroying the kernel is the kexec shutdown path (it never
// touches a FROZEN device, and clears Bus Master on everything else, as
// Linux's device_shutdown does); kernel::boot() on the same platform is the
// new kernel, which adopts a prepared handover image or refuses it whole.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "keepalive/abi/syscalls.hpp"
#include "keepalive/error.hpp"
#include "kmem.hpp"
#include "platform.hpp"

namespace keepalive::sim {

enum class kernel_mode {
  keepalive,  // this project
  baseline,   // an unpatched kernel: no keepalive ioctls (ENOTTY); close disables, resets, frees
};

struct kernel_config {
  kernel_mode mode = kernel_mode::keepalive;
  memory_map map{};
  apic_id host_cpu{0};    // first host CPU; remapped device vectors spread over host_cpus CPUs
  unsigned host_cpus = 16;  // 176 device vectors each (0x30..0xDF), as Linux's per-CPU vector spaces
};

struct kernel_stats {
  std::uint64_t device_resets = 0;          // FLRs the kernel performed
  std::uint64_t eventfd_signals = 0;        // VFIO trigger eventfds signalled (remapped mode)
  std::uint64_t irqfd_signals = 0;          // guest vectors delivered to irqfds (posted mode)
  std::uint64_t notifications = 0;          // posted-interrupt notification vectors handled
  std::uint64_t spurious = 0;               // host vector with no handler (would be a lost irq)
  std::uint64_t preserved_drained = 0;      // vectors found pending at reconnect and delivered
  std::uint64_t handover_rejected = 0;      // images refused at boot
  std::uint64_t generation = 0;             // completed stage-2 cycles
};

class kernel_core;
class process;

class kernel {
 public:
  static result<std::unique_ptr<kernel>> boot(platform& plat, const kernel_config& cfg = {});
  ~kernel();
  kernel(const kernel&) = delete;
  kernel& operator=(const kernel&) = delete;

  // A new process (VMM, tool) with an empty fd table.
  [[nodiscard]] std::shared_ptr<process> spawn(std::string name);
  [[nodiscard]] kernel_stats stats() const;
  [[nodiscard]] const kernel_config& config() const noexcept { return cfg_; }
  [[nodiscard]] platform& hardware() noexcept { return plat_; }
  // Human-readable state (devices, vectors, IRTEs and descriptors decoded).
  [[nodiscard]] std::string describe() const;

 private:
  kernel(platform& plat, const kernel_config& cfg);
  platform& plat_;
  kernel_config cfg_;
  std::shared_ptr<kernel_core> core_;
};

// A process: the syscall seam onto the sim kernel. Exiting (destruction, or
// exit()) closes every fd as the kernel would for a dying process — a VMM
// killed with SIGKILL is exactly this.
class process final : public abi::syscalls {
 public:
  process(std::weak_ptr<kernel_core> core, std::string name);
  ~process() override;

  long ioctl(int fd, unsigned long cmd, void* arg) override;
  result<int> open(std::string_view path, int flags) override;
  errc close(int fd) override;
  result<std::size_t> pread(int fd, std::span<std::byte> out, std::uint64_t offset) override;
  result<std::size_t> pwrite(int fd, std::span<const std::byte> in, std::uint64_t offset) override;
  void exit();
  [[nodiscard]] const std::string& name() const noexcept { return name_; }

 private:
  std::weak_ptr<kernel_core> core_;
  std::string name_;
  int pid_ = 0;
};

// kexec: shut the old kernel down and boot a new one on the same platform.
result<std::unique_ptr<kernel>> kexec(std::unique_ptr<kernel> old);

}  // namespace keepalive::sim
