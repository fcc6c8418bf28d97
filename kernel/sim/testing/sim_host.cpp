#include "sim_host.hpp"

#include <linux/vfio.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "keepalive/abi/ops.hpp"
#include "sim_uapi.h"

namespace keepalive::sim::testing {
namespace {
constexpr std::uint64_t bar0_region = std::uint64_t{VFIO_PCI_BAR0_REGION_INDEX} << 40;
constexpr std::uint64_t config_region = std::uint64_t{VFIO_PCI_CONFIG_REGION_INDEX} << 40;
status from_rc(long rc, const char* what) {
  if (rc < 0) return {errc_from_errno(static_cast<int>(-rc)), what};
  return {};
}
}  // namespace

// ------------------------------------------------------------------ guest

device_access direct_access(pci_function& fn) {
  return {[&fn](std::uint64_t reg) -> std::optional<std::uint64_t> { return fn.mmio_read(0, reg, 8); },
          [&fn](std::uint64_t reg, std::uint64_t v) {
            fn.mmio_write(0, reg, 8, v);
            return true;
          }};
}

guest::guest(std::byte* ram, const guest_layout& layout, device_access dev)
    : ram_{ram}, layout_{layout}, irq_fd_{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)}, dev_{std::move(dev)} {}

guest::guest(platform& plat, hpa ram, const guest_layout& layout, bdf nic)
    : guest{plat.memory().base() + ram.value(), layout, direct_access(*plat.find(nic))} {}

guest::~guest() {
  stop();
  ::close(irq_fd_);
}

void guest::attach(device_access dev) {
  std::lock_guard l{dev_mu_};
  dev_ = std::move(dev);
}
void guest::detach() {
  std::lock_guard l{dev_mu_};
  dev_ = {};
}

bool guest::init_ring() {
  std::lock_guard l{dev_mu_};
  if (!dev_.write) return false;
  auto* ring = reinterpret_cast<ka_nic_rx_desc*>(ram_ + layout_.ring_gpa);
  for (std::uint32_t i = 0; i < layout_.ring_entries; ++i) {
    ring[i] = {};
    ring[i].buffer = layout_.buffers_gpa + std::uint64_t{i} * layout_.buffer_bytes;
  }
  next_ = 0;
  // A re-initialising driver still knows the last sequence number it saw:
  // whatever the device dropped while it was reset shows up as a gap.
  if (!initialised_) {
    auto seq = dev_.read(KA_NIC_NEXT_SEQ);
    if (!seq) return false;
    expected_seq_ = *seq;
  }
  initialised_ = true;
  return dev_.write(KA_NIC_RX_RING_BASE, layout_.ring_gpa) && dev_.write(KA_NIC_RX_RING_SIZE, layout_.ring_entries) &&
         dev_.write(KA_NIC_PAYLOAD_LEN, layout_.payload_bytes) && dev_.write(KA_NIC_RX_TAIL, layout_.ring_entries - 1) &&
         dev_.write(KA_NIC_CTRL, KA_NIC_CTRL_ENABLE);
}

void guest::start() {
  stop_ = false;
  thread_ = std::thread{[this] { run(); }};
}
void guest::stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void guest::run() {
  while (!stop_) {
    pollfd p{irq_fd_, POLLIN, 0};
    if (paused_ || ::poll(&p, 1, 5) <= 0) {
      if (paused_) std::this_thread::sleep_for(std::chrono::microseconds{200});
      continue;
    }
    std::uint64_t n = 0;
    if (::read(irq_fd_, &n, sizeof n) == sizeof n) {
      interrupts += n;
      consume();
    }
  }
}

void guest::consume() {
  auto* ring = reinterpret_cast<ka_nic_rx_desc*>(ram_ + layout_.ring_gpa);
  bool any = false;
  for (;;) {
    auto& d = ring[next_];
    const auto status = std::atomic_ref<std::uint16_t>{d.status}.load(std::memory_order_acquire);
    if (!(status & KA_NIC_DESC_DD)) break;
    const auto* buf = reinterpret_cast<const std::uint8_t*>(ram_ + d.buffer);
    ka_nic_packet_hdr h;
    std::memcpy(&h, buf, sizeof h);
    const auto* payload = buf + sizeof h;
    bool ok = h.payload_len == layout_.payload_bytes && ka_nic_checksum(h.seq, payload, h.payload_len) == h.checksum;
    for (std::uint32_t i = 0; ok && i < h.payload_len; ++i) ok = payload[i] == ka_nic_payload_byte(h.seq, i);
    if (!ok) ++corrupted;
    if (h.seq != expected_seq_) {
      ++gaps;
      if (h.seq > expected_seq_) lost_seqs += h.seq - expected_seq_;
    }
    expected_seq_ = h.seq + 1;
    ++received;
    std::atomic_ref<std::uint16_t>{d.status}.store(0, std::memory_order_release);
    next_ = (next_ + 1) % layout_.ring_entries;
    any = true;
  }
  if (!any) return;
  std::lock_guard l{dev_mu_};
  if (!dev_.write || !dev_.write(KA_NIC_RX_TAIL, (next_ + layout_.ring_entries - 1) % layout_.ring_entries))
    ++tail_write_failures;
}

// ------------------------------------------------------------------ VFIO flow

vfio_flow::vfio_flow(abi::syscalls& sys, bdf nic, std::uint64_t ram_bytes, std::uint64_t ram_vaddr, int irq_fd)
    : sys_{sys}, nic_{nic}, ram_bytes_{ram_bytes}, ram_vaddr_{ram_vaddr}, irq_fd_{irq_fd} {}

status vfio_flow::open_device(const std::optional<token>& t) {
  if (ram_vaddr_ == 0) return {errc::no_memory, "map guest RAM"};
  auto c = sys_.open("/dev/vfio/vfio", O_RDWR);
  if (!c) return c.err();
  container_ = *c;
  auto g = sys_.open("/dev/vfio/" + std::to_string(nic_.source_id()), O_RDWR);
  if (!g) return g.err();
  group_ = *g;
  if (auto st = from_rc(sys_.ioctl(group_, VFIO_GROUP_SET_CONTAINER, &container_), "SET_CONTAINER"); !st) return st;
  if (auto st = from_rc(sys_.ioctl(container_, VFIO_SET_IOMMU, reinterpret_cast<void*>(std::uintptr_t{VFIO_TYPE1v2_IOMMU})),
                        "SET_IOMMU");
      !st)
    return st;
  std::string name = t ? abi::reclaim_name(nic_, *t) : nic_.to_string();
  const long fd = sys_.ioctl(group_, VFIO_GROUP_GET_DEVICE_FD, name.data());
  if (fd < 0) return from_rc(fd, "GET_DEVICE_FD");
  device_ = static_cast<int>(fd);
  vfio_iommu_type1_dma_map map{};
  map.argsz = sizeof map;
  map.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
  map.vaddr = ram_vaddr_;
  map.iova = 0;
  map.size = ram_bytes_;
  if (auto st = from_rc(sys_.ioctl(container_, VFIO_IOMMU_MAP_DMA, &map), "MAP_DMA"); !st) return st;
  if (map.vaddr != ram_vaddr_) return {errc::io, "MAP_DMA: vaddr not restored"};
  return {};
}

status vfio_flow::connect_vector() {
  // The same eventfd for VFIO and for the VM's irqfd, as QEMU does: with
  // posting, delivery bypasses it; without, it is the interrupt.
  alignas(8) std::byte buf[sizeof(vfio_irq_set) + sizeof(std::int32_t)]{};
  auto* set = reinterpret_cast<vfio_irq_set*>(buf);
  set->argsz = sizeof buf;
  set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
  set->index = VFIO_PCI_MSIX_IRQ_INDEX;
  set->start = 0;
  set->count = 1;
  const std::int32_t efd = irq_fd_;
  std::memcpy(buf + sizeof(vfio_irq_set), &efd, sizeof efd);
  if (auto st = from_rc(sys_.ioctl(device_, VFIO_DEVICE_SET_IRQS, set), "SET_IRQS"); !st) return st;
  std::int32_t back;
  std::memcpy(&back, buf + sizeof(vfio_irq_set), sizeof back);
  if (back != efd) return {errc::io, "SET_IRQS: eventfd not restored"};
  auto vm = sys_.open("/dev/kvm", O_RDWR);
  if (!vm) return vm.err();
  vm_ = *vm;
  ka_sim_pid pid{};
  pid.size = sizeof pid;
  pid.host_apic_id = 1;
  if (auto st = from_rc(sys_.ioctl(vm_, KA_SIM_CREATE_PID, &pid), "CREATE_PID"); !st) return st;
  ka_sim_irq_bypass b{};
  b.size = sizeof b;
  b.device_fd = device_;
  b.msix_index = 0;
  b.pid_id = pid.out_pid_id;
  b.guest_vector = 0x40;
  b.irqfd = irq_fd_;
  const long rc = sys_.ioctl(vm_, KA_SIM_IRQ_BYPASS, &b);
  if (b.irqfd != irq_fd_) return {errc::io, "IRQ_BYPASS: irqfd not restored"};
  // Without posted interrupts the vector stays remapped: the kernel signals
  // the same eventfd, which is what a VMM falls back to.
  if (rc == -EOPNOTSUPP) return {};
  return from_rc(rc, "IRQ_BYPASS");
}

status vfio_flow::start_nic(guest& g, std::uint64_t rate_pps, std::uint32_t irq_mod_pkts, std::uint32_t irq_mod_usec) {
  std::uint16_t cmd = 0x6;  // memory space + bus master
  if (auto r = sys_.pwrite(device_, std::as_bytes(std::span{&cmd, 1}), config_region + 4); !r) return r.err();
  if (auto st = connect_vector(); !st) return st;
  if (auto st = write_reg(KA_NIC_IRQ_MOD_PKTS, irq_mod_pkts); !st) return st;
  if (auto st = write_reg(KA_NIC_IRQ_MOD_USEC, irq_mod_usec); !st) return st;
  if (!g.init_ring()) return {errc::io, "guest driver: ring init"};
  return write_reg(KA_NIC_RATE_PPS, rate_pps);
}

status vfio_flow::fd_handoff() {
  vfio_iommu_type1_dma_unmap u{};
  u.argsz = sizeof u;
  u.flags = VFIO_DMA_UNMAP_FLAG_VADDR;
  u.iova = 0;
  u.size = ram_bytes_;
  if (auto st = from_rc(sys_.ioctl(container_, VFIO_IOMMU_UNMAP_DMA, &u), "UNMAP_DMA(VADDR)"); !st) return st;
  vfio_iommu_type1_dma_map m{};
  m.argsz = sizeof m;
  m.flags = VFIO_DMA_MAP_FLAG_VADDR;
  m.vaddr = ram_vaddr_;
  m.iova = 0;
  m.size = ram_bytes_;
  if (auto st = from_rc(sys_.ioctl(container_, VFIO_IOMMU_MAP_DMA, &m), "MAP_DMA(VADDR)"); !st) return st;
  if (vm_ >= 0) (void)sys_.close(vm_);  // the old VM goes; the new one gets new descriptors
  vm_ = -1;
  return connect_vector();
}

status vfio_flow::write_reg(std::uint64_t off, std::uint64_t v) {
  auto r = sys_.pwrite(device_, std::as_bytes(std::span{&v, 1}), bar0_region + off);
  return r ? status{} : status{r.err()};
}

result<std::uint64_t> vfio_flow::read_reg(std::uint64_t off) {
  std::uint64_t v = 0;
  auto r = sys_.pread(device_, std::as_writable_bytes(std::span{&v, 1}), bar0_region + off);
  if (!r) return r.err();
  return v;
}

device_access vfio_flow::access() {
  return {[this](std::uint64_t reg) -> std::optional<std::uint64_t> {
            auto v = read_reg(reg);
            return v ? std::optional{*v} : std::nullopt;
          },
          [this](std::uint64_t reg, std::uint64_t v) { return static_cast<bool>(write_reg(reg, v)); }};
}

// ------------------------------------------------------------------ vmm

vmm::vmm(kernel& k, std::string name, guest& g, const guest_layout& layout, hpa guest_ram, bdf nic)
    : proc_{k.spawn(std::move(name))}, guest_{g}, flow_{*proc_, nic, layout.ram_bytes, guest_ram.value(), g.irq_fd()} {}

status vmm::cold_start(std::uint64_t rate_pps, std::uint32_t irq_mod_pkts, std::uint32_t irq_mod_usec) {
  if (auto st = flow_.open_device(std::nullopt); !st) return st;
  return flow_.start_nic(guest_, rate_pps, irq_mod_pkts, irq_mod_usec);
}

status vmm::reclaim(const std::optional<token>& t) {
  if (auto st = flow_.open_device(t); !st) return st;
  if (auto st = flow_.connect_vector(); !st) return st;
  if (t) return leave_keepalive(*t);
  return {};
}

void vmm::exit() {
  if (proc_) proc_->exit();
}

}  // namespace keepalive::sim::testing
