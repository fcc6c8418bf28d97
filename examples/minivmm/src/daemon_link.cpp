#include "daemon_link.hpp"

#include <cerrno>

#include "keepalive/sim_transport.hpp"

namespace keepalive::minivmm {
namespace {

class daemon_link final : public host_link {
 public:
  explicit daemon_link(std::unique_ptr<sim_transport> t) : t_{std::move(t)} {}
  abi::syscalls& sys() override { return *t_; }
  std::uint64_t guest_area_offset() const override { return t_->guest_start(); }
  std::uint64_t guest_area_bytes() const override { return t_->phys_size() - t_->guest_start(); }
  result<std::byte*> map_ram(std::uint64_t phys_offset, std::uint64_t bytes) override {
    void* p = t_->map_phys(phys_offset, bytes);
    if (p == nullptr) return error{errc_from_errno(errno), "map guest RAM from the daemon's physical memory"};
    return static_cast<std::byte*>(p);
  }
  void unmap_ram(std::byte* mapping, std::uint64_t) override { t_->unmap_phys(mapping); }
  // The transport turns addresses inside map_phys() mappings into memfd offsets.
  std::uint64_t dma_vaddr(std::uint64_t, const void* mapping) const override {
    return reinterpret_cast<std::uint64_t>(mapping);
  }
  apic_id host_cpu() const override { return apic_id{0}; }
  void exit() override { t_.reset(); }  // the connection closes: the daemon's process exits

 private:
  std::unique_ptr<sim_transport> t_;
};

}  // namespace

result<std::unique_ptr<host_link>> connect_daemon(std::string_view socket) {
  auto t = sim_transport::connect(socket);
  if (!t) return t.err();
  return std::unique_ptr<host_link>{std::make_unique<daemon_link>(std::move(*t))};
}

}  // namespace keepalive::minivmm
