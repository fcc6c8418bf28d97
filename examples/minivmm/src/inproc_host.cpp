#include "inproc_host.hpp"

#include <sys/mman.h>

#include <cerrno>

namespace keepalive::minivmm {
namespace {

class inproc_link final : public host_link {
 public:
  inproc_link(std::shared_ptr<sim::process> p, sim::platform& plat, const sim::kernel_config& k)
      : proc_{std::move(p)},
        fd_{plat.memory().fd()},
        start_{k.map.guest_start()},
        bytes_{plat.memory().size() - k.map.guest_start()},
        cpu_{k.host_cpu} {}
  ~inproc_link() override { inproc_link::exit(); }
  abi::syscalls& sys() override { return *proc_; }
  std::uint64_t guest_area_offset() const override { return start_; }
  std::uint64_t guest_area_bytes() const override { return bytes_; }
  result<std::byte*> map_ram(std::uint64_t phys_offset, std::uint64_t bytes) override {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, static_cast<off_t>(phys_offset));
    if (p == MAP_FAILED) return error{errc_from_errno(errno), "mmap guest RAM from the physical-memory file"};
    return static_cast<std::byte*>(p);
  }
  void unmap_ram(std::byte* mapping, std::uint64_t bytes) override { ::munmap(mapping, bytes); }
  std::uint64_t dma_vaddr(std::uint64_t phys_offset, const void*) const override { return phys_offset; }
  apic_id host_cpu() const override { return cpu_; }
  void exit() override {
    if (proc_) proc_->exit();
  }

 private:
  std::shared_ptr<sim::process> proc_;
  int fd_;
  std::uint64_t start_, bytes_;
  apic_id cpu_;
};

}  // namespace

result<std::unique_ptr<inproc_host>> inproc_host::create(const inproc_config& cfg) {
  std::unique_ptr<inproc_host> h{new inproc_host};
  sim::platform_config pc;
  pc.phys_bytes = cfg.kernel_bytes + cfg.guest_area_bytes;
  pc.posted_interrupts = cfg.posted_interrupts;
  auto plat = sim::platform::create(pc);
  if (!plat) return plat.err();
  h->plat_ = std::move(*plat);
  h->kcfg_.map.kernel_end = cfg.kernel_bytes;
  h->kcfg_.mode = cfg.baseline ? sim::kernel_mode::baseline : sim::kernel_mode::keepalive;
  auto k = sim::kernel::boot(*h->plat_, h->kcfg_);
  if (!k) return k.err();
  h->kernel_ = std::move(*k);
  return h;
}

inproc_host::~inproc_host() {
  // Stop the wire before the kernel goes away (device threads call into it).
  if (plat_)
    for (auto& f : plat_->functions())
      if (auto* n = plat_->find_nic(f->address())) n->mmio_write(0, KA_NIC_RATE_PPS, 8, 0);
  kernel_.reset();
}

std::unique_ptr<host_link> inproc_host::connect(std::string process_name) {
  return std::make_unique<inproc_link>(kernel_->spawn(std::move(process_name)), *plat_, kcfg_);
}

}  // namespace keepalive::minivmm
