#include "vmm.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <time.h>

#include <cstring>

#include <fmt/format.h>

namespace keepalive::minivmm {
namespace {

constexpr int kick_signal = SIGUSR2;
constexpr std::size_t console_limit = 64 * 1024;

void install_kick_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa{};
    sa.sa_handler = [](int) {};  // only interrupts KVM_RUN (no SA_RESTART)
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    ::sigaction(kick_signal, &sa, nullptr);
  });
}

std::uint64_t load_word(const std::byte* p) noexcept {
  return std::atomic_ref<const std::uint64_t>{*reinterpret_cast<const std::uint64_t*>(p)}.load(std::memory_order_acquire);
}

}  // namespace

std::uint64_t monotonic_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

result<std::unique_ptr<vmm>> vmm::prepare(std::unique_ptr<host_link> host, const vmm_options& opt) {
  const std::uint64_t t0 = monotonic_ns();
  if (!host) return error{errc::not_found, "no connection to the host"};
  if (auto st = validate(opt.guest); !st) return st.err();
  std::unique_ptr<vmm> v{new vmm{std::move(host), opt}};
  auto& h = *v->host_;
  const std::uint64_t bytes = opt.guest.ram_bytes + opt.high_ram_bytes;
  if (opt.ram_slice % (2ull << 20) != 0 || opt.high_ram_bytes % (2ull << 20) != 0 ||
      opt.ram_slice + bytes > h.guest_area_bytes())
    return error{errc::invalid, fmt::format("guest RAM slice {:#x}+{:#x} outside the host's guest area", opt.ram_slice, bytes)};

  auto vm = kvm_vm::create();
  if (!vm) return vm.err();
  v->vm_ = std::move(*vm);
  v->irq_eventfd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!v->irq_eventfd_.valid()) return error{errc_from_errno(errno), "eventfd"};
  // The MSI route and the irqfd (KVM_SET_GSI_ROUTING waits for an SRCU grace
  // period, ~3 ms here) on a second thread while the memory slots are set up
  // (each also waits for one, on another SRCU): after an exec this is in the pause.
  status routed;
  std::jthread router{[&v, &routed, &opt] {
    const auto& r = opt.route;
    routed = v->vm_->set_msi_route(r.gsi, msi_address(r.guest_apic.value()), msi_data(r.guest_vector.value()));
    if (routed) routed = v->vm_->irqfd(v->irq_eventfd_.get(), r.gsi, true);
  }};
  auto ram = h.map_ram(h.guest_area_offset() + opt.ram_slice, bytes);
  if (!ram) return ram.err();
  v->ram_ = *ram;
  if (auto st = v->vm_->map_memory(0, 0, v->ram_, opt.guest.ram_bytes); !st) return st.err();
  if (opt.high_ram_bytes > 0)
    if (auto st = v->vm_->map_memory(1, high_ram_gpa, v->ram_ + opt.guest.ram_bytes, opt.high_ram_bytes); !st)
      return st.err();
  auto vcpu = v->vm_->create_vcpu(0);
  if (!vcpu) return vcpu.err();
  v->vcpu_ = std::move(*vcpu);
  auto khz = v->vcpu_->tsc_khz();
  if (!khz) return khz.err();
  v->tsc_khz_ = *khz;
  router.join();
  if (!routed) return routed.err();
  v->timing_.prepare_ns = monotonic_ns() - t0;
  return v;
}

vmm::~vmm() {
  stop_vcpu();
  nic_.reset();
  vcpu_.reset();
  vm_.reset();
  // Without host_ the files were carried to the successor (in-process: RAM is a plain mmap).
  if (ram_ != nullptr) {
    if (host_)
      host_->unmap_ram(ram_, opt_.guest.ram_bytes + opt_.high_ram_bytes);
    else
      ::munmap(ram_, opt_.guest.ram_bytes + opt_.high_ram_bytes);
  }
  if (host_) host_->exit();
}

status vmm::boot(std::span<const std::byte> image) {
  if (nic_ || running_) return {errc::busy, "already booted"};
  const std::span<std::byte> ram{ram_, static_cast<std::size_t>(opt_.guest.ram_bytes)};
  if (auto st = load_guest(ram, image, opt_.guest, tsc_khz_); !st) return st;
  auto sregs = vcpu_->get_sregs();
  if (!sregs) return sregs.err();
  initial_sregs(*sregs);
  if (auto st = vcpu_->set_sregs(*sregs); !st) return st;
  if (auto st = vcpu_->set_regs(initial_regs()); !st) return st;

  auto& h = *host_;
  auto dev = std::make_unique<passthrough>(h.sys(), opt_.nic);
  const std::uint64_t phys = h.guest_area_offset() + opt_.ram_slice;
  if (auto st = dev->open(std::nullopt, h.dma_vaddr(phys, ram_), 0, opt_.guest.ram_bytes); !st) return st;
  if (auto st = map_high_ram(*dev); !st) return st;
  if (auto st = dev->enable(); !st) return st;
  if (auto st = dev->connect_vector(opt_.route, irq_eventfd_.get(), h.host_cpu()); !st) return st;
  nic_ = std::move(dev);
  return start_vcpu();
}

result<vmm_state> vmm::handover(const token& t) {
  if (!nic_ || !running_) return error{errc::busy, "nothing to hand over"};
  if (t.is_nil()) return error{errc::invalid, "nil token"};
  vmm_state s;
  s.pause_started_ns = monotonic_ns();
  pause_vcpu();
  const std::uint64_t stopped = monotonic_ns();
  timing_.stop_ns = stopped - s.pause_started_ns;

  if (armed_ && *armed_ != t) {
    resume_vcpu();
    return error{errc::invalid, "keepalive is armed with another token"};
  }
  if (!armed_) {
    auto e = nic_->keepalive_enter(t);
    if (!e) {
      resume_vcpu();
      return e.err();
    }
  }
  const std::uint64_t entered = monotonic_ns();
  timing_.enter_ns = entered - stopped;
  // Closing the device (container, group, device fd) leaves it OWNERLESS: its
  // vectors post into a descriptor keepalive owns, drained at the reclaim, and
  // this VM's eventfd is never signalled again. Every earlier signal was
  // injected into the LAPIC inside the eventfd write (KVM injects a fixed
  // single-destination MSI synchronously from the irqfd wake-up): the LAPIC
  // saved below has them all. Hence no KVM_IRQFD deassign: it waits for an SRCU
  // grace period (1-8 ms on this host, most of the earlier pause); the irqfd
  // goes with this VM, after the resume. Closing before saving also closes the
  // window where an interrupt would land in a LAPIC already saved.
  nic_.reset();
  const std::optional<token> was_armed = std::exchange(armed_, std::nullopt);
  const std::uint64_t released = monotonic_ns();
  timing_.release_ns = released - entered;
  timing_.flush_ns = 0;
  auto call_off = [&](const error& why) -> error {
    // The restart is called off: this VMM reclaims its device, the guest runs on.
    const device_record self{opt_.nic, opt_.route, t};
    if (auto st = reclaim(self, host_->guest_area_offset() + opt_.ram_slice); !st)
      return error{st.code(), why.message() + "; and reclaiming the device failed: " + st.err().message()};
    if (was_armed)
      if (auto e = nic_->keepalive_enter(*was_armed); e) armed_ = was_armed;
    resume_vcpu();
    return why;
  };
  auto vs = vcpu_->save(vm_->state_msrs());
  if (!vs) return call_off(vs.err());
  auto chip = vm_->save_irqchip();
  if (!chip) return call_off(chip.err());
  stop_vcpu();
  timing_.get_state_ns = monotonic_ns() - released;
  s.ram_phys_offset = host_->guest_area_offset() + opt_.ram_slice;
  s.tsc_khz = tsc_khz_;
  s.guest = opt_.guest;
  s.vcpus.push_back(std::move(*vs));
  s.irqchip = *chip;
  s.devices.push_back({opt_.nic, opt_.route, t});
  timing_.save_ns = monotonic_ns() - entered;
  return s;
}

status vmm::reclaim(const device_record& d, std::uint64_t ram_phys_offset) {
  auto& h = *host_;
  auto dev = std::make_unique<passthrough>(h.sys(), d.device);
  if (auto st = dev->open(d.owner, h.dma_vaddr(ram_phys_offset, ram_), 0, opt_.guest.ram_bytes); !st) return st;
  if (auto st = map_high_ram(*dev); !st) return st;
  // Reconnecting drains what was posted while nobody owned the device into our
  // eventfd: the irqfd injects it into the LAPIC (restored before this).
  if (auto st = dev->connect_vector(d.route, irq_eventfd_.get(), h.host_cpu()); !st) return st;
  if (auto st = dev->keepalive_leave(d.owner); !st) return st;
  nic_ = std::move(dev);
  opt_.nic = d.device;
  return {};
}

status vmm::take_over(const vmm_state& s) {
  if (nic_ || running_) return {errc::busy, "already running a guest"};
  if (s.vcpus.size() != 1 || s.devices.size() != 1) return {errc::invalid, "this VMM runs one vCPU and one device"};
  if (s.ram_phys_offset != host_->guest_area_offset() + opt_.ram_slice || s.guest.ram_bytes != opt_.guest.ram_bytes)
    return {errc::invalid, "guest RAM of the handed-over VM is not the RAM this VMM mapped"};
  if (s.tsc_khz != tsc_khz_) return {errc::invalid, "TSC frequency differs"};
  const std::uint64_t t0 = monotonic_ns();
  opt_.guest = s.guest;
  if (auto st = vm_->restore_irqchip(s.irqchip); !st) return st;
  if (auto st = vcpu_->restore(s.vcpus[0]); !st) return st;
  const std::uint64_t restored = monotonic_ns();
  timing_.restore_ns = restored - t0;

  const auto& d = s.devices[0];
  if (d.route.gsi != opt_.route.gsi || d.route.guest_vector != opt_.route.guest_vector ||
      d.route.guest_apic != opt_.route.guest_apic)
    return {errc::invalid, "vector route differs from the prepared one"};
  if (auto st = reclaim(d, s.ram_phys_offset); !st) return st;
  timing_.reclaim_ns = monotonic_ns() - restored;
  // The guest has not run since the pause: its counters are as it left them.
  const auto c = counters();
  timing_.guest_irqs_at_pause = c.interrupts;
  timing_.guest_last_irq_tsc = c.tsc_last_irq;
  const std::uint64_t before_start = monotonic_ns();
  if (auto st = start_vcpu(); !st) return st;
  const std::uint64_t started = monotonic_ns();
  timing_.start_ns = started - before_start;
  timing_.pause_ns = started - s.pause_started_ns;
  return {};
}

result<vmm_state> vmm::save_for_restart(bool flush_irqfd) {
  if (!running_) return error{errc::busy, "nothing to hand over"};
  vmm_state s;
  s.pause_started_ns = monotonic_ns();
  pause_vcpu();
  const std::uint64_t stopped = monotonic_ns();
  timing_ = restart_timing{.prepare_ns = timing_.prepare_ns};
  timing_.stop_ns = stopped - s.pause_started_ns;
  if (flush_irqfd)
    if (auto st = vm_->irqfd(irq_eventfd_.get(), opt_.route.gsi, false); !st) {
      resume_vcpu();
      return st.err();
    }
  const std::uint64_t flushed = monotonic_ns();
  timing_.flush_ns = flushed - stopped;
  auto vs = vcpu_->save(vm_->state_msrs());
  auto chip = vs ? vm_->save_irqchip() : result<irqchip_state>{vs.err()};
  if (!vs || !chip) {
    if (flush_irqfd) (void)vm_->irqfd(irq_eventfd_.get(), opt_.route.gsi, true);
    resume_vcpu();
    return vs ? chip.err() : vs.err();
  }
  stop_vcpu();
  timing_.get_state_ns = monotonic_ns() - flushed;
  s.ram_phys_offset = host_->guest_area_offset() + opt_.ram_slice;
  s.tsc_khz = tsc_khz_;
  s.guest = opt_.guest;
  s.vcpus.push_back(std::move(*vs));
  s.irqchip = *chip;
  timing_.save_ns = monotonic_ns() - stopped;
  return s;
}

carried_fds vmm::release_fds() {
  carried_fds c;
  c.nic = std::move(nic_);
  c.irq_eventfd = std::move(irq_eventfd_);
  c.host = std::move(host_);
  return c;
}

status vmm::take_over_carried(const vmm_state& s, carried_fds fds, bool rewire) {
  if (nic_ || running_) return {errc::busy, "already running a guest"};
  if (!fds.host || !fds.nic || !fds.irq_eventfd.valid()) return {errc::invalid, "nothing carried"};
  if (s.vcpus.size() != 1) return {errc::invalid, "this VMM runs one vCPU"};
  if (s.ram_phys_offset != host_->guest_area_offset() + opt_.ram_slice || s.guest.ram_bytes != opt_.guest.ram_bytes)
    return {errc::invalid, "guest RAM of the handed-over VM is not the RAM this VMM mapped"};
  const std::uint64_t t0 = monotonic_ns();
  timing_ = restart_timing{.prepare_ns = timing_.prepare_ns};
  opt_.guest = s.guest;
  if (auto st = vm_->restore_irqchip(s.irqchip); !st) return st;
  if (auto st = vcpu_->restore(s.vcpus[0]); !st) return st;
  const std::uint64_t restored = monotonic_ns();
  timing_.restore_ns = restored - t0;
  // The carried process (its fd table) replaces the one this VMM connected
  // with; guest RAM stays mapped (the same file, whoever mapped it).
  host_ = std::move(fds.host);
  nic_ = std::move(fds.nic);
  std::uint64_t repointed = restored;
  if (rewire) {
    const std::uint64_t phys = s.ram_phys_offset;
    if (auto st = nic_->repoint_dma(host_->dma_vaddr(phys, ram_), 0, s.guest.ram_bytes); !st) return st;
    if (opt_.high_ram_bytes > 0)
      if (auto st = nic_->repoint_dma(host_->dma_vaddr(phys + s.guest.ram_bytes, ram_ + s.guest.ram_bytes), high_ram_gpa,
                                      opt_.high_ram_bytes);
          !st)
        return st;
    repointed = monotonic_ns();
    timing_.repoint_ns = repointed - restored;
    // The vector posts into a descriptor of the new VM; this VM's irqfd on the
    // carried eventfd injects what was signalled since the old one let go.
    if (auto st = nic_->rewire_vector(opt_.route, fds.irq_eventfd.get(), host_->host_cpu()); !st) return st;
    if (auto st = vm_->irqfd(fds.irq_eventfd.get(), opt_.route.gsi, true); !st) return st;
    // The prepared eventfd's irqfd stays assigned to an eventfd nobody signals.
    irq_eventfd_ = std::move(fds.irq_eventfd);
    timing_.rewire_ns = monotonic_ns() - repointed;
  }
  const std::uint64_t before_start = monotonic_ns();
  const auto c = counters();
  timing_.guest_irqs_at_pause = c.interrupts;
  timing_.guest_last_irq_tsc = c.tsc_last_irq;
  if (auto st = start_vcpu(); !st) return st;
  const std::uint64_t started = monotonic_ns();
  timing_.start_ns = started - before_start;
  timing_.pause_ns = started - s.pause_started_ns;
  return {};
}

status vmm::reboot_reclaim(std::span<const std::byte> image, const token& t) {
  if (nic_ || running_) return {errc::busy, "already running a guest"};
  auto& h = *host_;
  const std::uint64_t phys = h.guest_area_offset() + opt_.ram_slice;
  auto dev = std::make_unique<passthrough>(h.sys(), opt_.nic);
  if (auto st = dev->open(t, h.dma_vaddr(phys, ram_), 0, opt_.guest.ram_bytes); !st) return st;
  if (auto st = map_high_ram(*dev); !st) return st;
  // The dead guest's ring is about to be overwritten: stop receiving first
  // (the driver's own CTRL write, as the rebooted guest does; no reset).
  if (auto st = dev->bar0_write(KA_NIC_CTRL, 8, 0); !st) return st;
  // The link partner holds the wire until the guest runs (the caller sets the
  // rate again): a driver reading NEXT_SEQ while packets are dropped in front
  // of its CTRL.ENABLE would start one sequence number late.
  if (auto st = dev->bar0_write(KA_NIC_RATE_PPS, 8, 0); !st) return st;
  const std::span<std::byte> ram{ram_, static_cast<std::size_t>(opt_.guest.ram_bytes)};
  if (auto st = load_guest(ram, image, opt_.guest, tsc_khz_); !st) return st;
  auto sregs = vcpu_->get_sregs();
  if (!sregs) return sregs.err();
  initial_sregs(*sregs);
  if (auto st = vcpu_->set_sregs(*sregs); !st) return st;
  if (auto st = vcpu_->set_regs(initial_regs()); !st) return st;
  if (auto st = dev->connect_vector(opt_.route, irq_eventfd_.get(), h.host_cpu()); !st) return st;
  if (auto st = dev->keepalive_leave(t); !st) return st;
  nic_ = std::move(dev);
  return start_vcpu();
}

status vmm::map_high_ram(passthrough& dev) {
  if (opt_.high_ram_bytes == 0) return {};
  const std::uint64_t phys = host_->guest_area_offset() + opt_.ram_slice + opt_.guest.ram_bytes;
  return dev.map_dma(host_->dma_vaddr(phys, ram_ + opt_.guest.ram_bytes), high_ram_gpa, opt_.high_ram_bytes);
}

status vmm::arm_keepalive(const token& t) {
  if (!nic_) return {errc::busy, "no device"};
  if (t.is_nil()) return {errc::invalid, "nil token"};
  if (armed_) {
    if (*armed_ == t) return {};
    if (auto st = nic_->keepalive_leave(*armed_); !st) return st;
    armed_.reset();
  }
  auto e = nic_->keepalive_enter(t);
  if (!e) return e.err();
  armed_ = t;
  return {};
}

status vmm::disarm_keepalive() {
  if (!nic_) return {errc::busy, "no device"};
  if (!armed_) return {};
  if (auto st = nic_->keepalive_leave(*armed_); !st) return st;
  armed_.reset();
  return {};
}

std::optional<token> vmm::armed_token() const { return armed_; }

result<abi::device_status> vmm::device_status() {
  if (!nic_) return error{errc::busy, "no device"};
  return abi::keepalive_status(host_->sys(), nic_->device_fd());
}

result<std::uint16_t> vmm::pci_command() {
  if (!nic_) return error{errc::busy, "no device"};
  return nic_->pci_command();
}

status vmm::set_rate(std::uint64_t pps) {
  if (!nic_) return {errc::busy, "no device"};
  return nic_->bar0_write(KA_NIC_RATE_PPS, 8, pps);
}

result<std::uint64_t> vmm::nic_reg(std::uint64_t offset) {
  if (!nic_) return error{errc::busy, "no device"};
  return nic_->bar0_read(offset, 8);
}

minivmm_counters vmm::counters() const {
  minivmm_counters c{};
  auto* out = reinterpret_cast<std::uint64_t*>(&c);
  const std::byte* in = ram_ + MINIVMM_COUNTERS_GPA;
  for (std::size_t i = 0; i < sizeof c / 8; ++i) out[i] = load_word(in + 8 * i);
  return c;
}

void vmm::bump_gap_epoch() {
  auto* w = reinterpret_cast<std::uint64_t*>(ram_ + MINIVMM_BOOT_INFO_GPA + offsetof(minivmm_boot_info, gap_epoch));
  std::atomic_ref<std::uint64_t>{*w}.fetch_add(1, std::memory_order_release);
}

exit_stats vmm::exits() const {
  exit_stats e;
  e.runs = exits_.runs.load();
  e.mmio = exits_.mmio.load();
  e.mmio_bar0 = exits_.mmio_bar0.load();
  e.mmio_other = exits_.mmio_other.load();
  e.io = exits_.io.load();
  e.interrupted = exits_.interrupted.load();
  return e;
}

std::optional<std::string> vmm::vcpu_failure() const {
  std::lock_guard lk{mu_};
  return failure_;
}

std::string vmm::console() const {
  std::lock_guard lk{mu_};
  return console_;
}

// ------------------------------------------------------------------ vCPU thread

status vmm::start_vcpu() {
  install_kick_handler();
  {
    std::lock_guard lk{mu_};
    stop_ = pause_req_ = paused_ = false;
    running_ = true;
  }
  vcpu_->run_area()->immediate_exit = 0;
  thread_ = std::thread{[this] { vcpu_loop(); }};
  return {};
}

void vmm::pause_vcpu() {
  std::unique_lock lk{mu_};
  if (!running_) return;
  pause_req_ = true;
  vcpu_->run_area()->immediate_exit = 1;
  ::pthread_kill(thread_.native_handle(), kick_signal);
  cv_.wait(lk, [this] { return paused_ || !running_; });
}

void vmm::resume_vcpu() {
  {
    std::lock_guard lk{mu_};
    pause_req_ = false;
  }
  cv_.notify_all();
}

void vmm::stop_vcpu() {
  {
    std::lock_guard lk{mu_};
    if (!thread_.joinable()) return;
    stop_ = true;
    vcpu_->run_area()->immediate_exit = 1;
    ::pthread_kill(thread_.native_handle(), kick_signal);
  }
  cv_.notify_all();
  thread_.join();
  std::lock_guard lk{mu_};
  running_ = false;
}

void vmm::fail(std::string why) {
  std::lock_guard lk{mu_};
  if (!failure_) failure_ = std::move(why);
}

void vmm::vcpu_loop() {
  kvm_run& run = *vcpu_->run_area();
  for (;;) {
    {
      std::unique_lock lk{mu_};
      if (stop_) break;
      if (pause_req_) {
        paused_ = true;
        cv_.notify_all();
        cv_.wait(lk, [this] { return !pause_req_ || stop_; });
        paused_ = false;
        if (stop_) break;
        run.immediate_exit = 0;
      }
    }
    exits_.runs.fetch_add(1, std::memory_order_relaxed);
    const int rc = vcpu_->run();
    if (rc == -EINTR || rc == -EAGAIN) {
      exits_.interrupted.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    if (rc < 0) {
      fail(fmt::format("KVM_RUN: {}", std::strerror(-rc)));
      break;
    }
    if (!handle_exit(run)) break;
  }
  std::lock_guard lk{mu_};
  running_ = false;
  cv_.notify_all();
}

bool vmm::handle_exit(kvm_run& run) {
  switch (run.exit_reason) {
    case KVM_EXIT_MMIO: handle_mmio(run); return true;
    case KVM_EXIT_IO: handle_io(run); return true;
    case KVM_EXIT_HLT:   // not with the in-kernel irqchip; harmless
    case KVM_EXIT_INTR: return true;
    case KVM_EXIT_SHUTDOWN: fail("guest shutdown (triple fault)"); return false;
    case KVM_EXIT_FAIL_ENTRY:
      fail(fmt::format("KVM_EXIT_FAIL_ENTRY reason {:#x}", run.fail_entry.hardware_entry_failure_reason));
      return false;
    case KVM_EXIT_INTERNAL_ERROR:
      fail(fmt::format("KVM_EXIT_INTERNAL_ERROR suberror {}", run.internal.suberror));
      return false;
    default: fail(fmt::format("unexpected exit reason {}", run.exit_reason)); return false;
  }
}

void vmm::handle_mmio(kvm_run& run) {
  exits_.mmio.fetch_add(1, std::memory_order_relaxed);
  auto& m = run.mmio;
  const std::uint64_t bar0 = opt_.guest.bar0_gpa;
  if (nic_ && m.phys_addr >= bar0 && m.phys_addr + m.len <= bar0 + KA_NIC_BAR0_SIZE && (m.len == 4 || m.len == 8)) {
    exits_.mmio_bar0.fetch_add(1, std::memory_order_relaxed);
    const std::uint64_t off = m.phys_addr - bar0;
    if (m.is_write) {
      std::uint64_t v = 0;
      std::memcpy(&v, m.data, m.len);
      if (auto st = nic_->bar0_write(off, m.len, v); !st) fail("BAR0 write: " + st.err().message());
    } else {
      auto v = nic_->bar0_read(off, m.len);
      const std::uint64_t val = v ? *v : ~std::uint64_t{0};
      std::memcpy(m.data, &val, m.len);
    }
    return;
  }
  exits_.mmio_other.fetch_add(1, std::memory_order_relaxed);
  if (!m.is_write) std::memset(m.data, 0xff, sizeof m.data);  // nothing there: all ones
}

void vmm::handle_io(kvm_run& run) {
  exits_.io.fetch_add(1, std::memory_order_relaxed);
  auto& io = run.io;
  auto* data = reinterpret_cast<char*>(&run) + io.data_offset;
  if (io.direction == KVM_EXIT_IO_OUT && io.port == MINIVMM_DEBUG_PORT && io.size == 1) {
    std::string text(data, io.count);
    {
      std::lock_guard lk{mu_};
      if (console_.size() < console_limit) console_ += text;
    }
    if (opt_.echo_guest_console) fmt::print(stderr, "{}", text);
    return;
  }
  if (io.direction == KVM_EXIT_IO_IN) std::memset(data, 0xff, std::size_t{io.size} * io.count);
}

}  // namespace keepalive::minivmm
