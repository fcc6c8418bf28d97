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
  session_.reset();  // the device fds first (see the members)
  wiring_.reset();
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

std::vector<ram_region> vmm::ram_regions() const {
  const std::uint64_t phys = host_->guest_area_offset() + opt_.ram_slice;
  const std::uint64_t low = opt_.guest.ram_bytes;
  std::vector<ram_region> out{{gpa{0}, iova{0}, low, host_->dma_vaddr(phys, ram_), "minivmm-guest-ram", phys}};
  if (opt_.high_ram_bytes > 0)
    out.push_back({gpa{high_ram_gpa}, iova{high_ram_gpa}, opt_.high_ram_bytes,
                   host_->dma_vaddr(phys + low, ram_ + low), "minivmm-guest-ram", phys + low});
  return out;
}

std::unique_ptr<sim_wiring> vmm::make_wiring(int eventfd) const {
  auto w = std::make_unique<sim_wiring>(host_->sys());
  w->set_eventfd(0, msix_index{static_cast<std::uint16_t>(opt_.route.msix_index)}, eventfd);
  w->set_host_cpu(0, host_->host_cpu());
  return w;
}

void vmm::attach_nic() {
  nic_ = std::make_unique<passthrough>(host_->sys(), session_->device_fd(0), session_->container_fd());
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

  // Cold open: container, group, device (reset by VFIO), DMA map of guest RAM,
  // the vector on our eventfd posted into this VM.
  wiring_ = make_wiring(irq_eventfd_.get());
  session_ = std::make_unique<session>(host_->sys());
  if (auto d = session_->add_device(nic_spec(opt_.nic, opt_.route)); !d) return d.err();
  for (auto& r : ram_regions())
    if (auto st = session_->add_ram(std::move(r)); !st) return st;
  if (auto st = session_->open(*wiring_); !st) return st;
  attach_nic();
  if (auto st = nic_->enable(); !st) return st;
  return start_vcpu();
}

void vmm::fill_state(vm_state& s, vcpu_state vcpu, const irqchip_state& chip) const {
  s.ram_phys_offset = host_->guest_area_offset() + opt_.ram_slice;
  s.tsc_khz = tsc_khz_;
  s.guest = opt_.guest;
  s.vcpus.push_back(std::move(vcpu));
  s.irqchip = chip;
  s.route = opt_.route;
}

result<snapshot> vmm::handover(const token& t) {
  if (!nic_ || !running_) return error{errc::busy, "nothing to hand over"};
  if (t.is_nil()) return error{errc::invalid, "nil token"};
  vm_state s;
  s.pause_started_ns = monotonic_ns();
  pause_vcpu();
  const std::uint64_t stopped = monotonic_ns();
  timing_.stop_ns = stopped - s.pause_started_ns;

  if (armed_ && *armed_ != t) {
    resume_vcpu();
    return error{errc::invalid, "keepalive is armed with another token"};
  }
  auto& sys = host_->sys();
  // Armed (QMP set-keepalive): the device is KEPT_ALIVE behind the session's
  // back; it leaves so that the session's freeze enters it as a whole.
  const std::optional<token> was_armed = std::exchange(armed_, std::nullopt);
  auto rearm = [&] {
    if (was_armed && nic_)
      if (abi::keepalive_enter(sys, session_->device_fd(0), *was_armed)) armed_ = was_armed;
  };
  if (was_armed)
    if (auto st = abi::keepalive_leave(sys, session_->device_fd(0), *was_armed); !st) {
      armed_ = was_armed;
      resume_vcpu();
      return st.err();
    }
  auto snap = session_->freeze(t);
  if (!snap) {
    rearm();
    resume_vcpu();
    return snap.err();
  }
  const std::uint64_t entered = monotonic_ns();
  timing_.enter_ns = entered - stopped;
  // The session's close-first order (session.hpp, ORDER): closing the device
  // leaves it OWNERLESS, its vector posts into a descriptor keepalive owns
  // (drained at the reclaim), and this VM's eventfd is never signalled again.
  // Every earlier signal was injected into the LAPIC inside the eventfd write
  // (KVM injects a fixed single-destination MSI synchronously from the irqfd
  // wake-up): the LAPIC saved below has them all. Hence no KVM_IRQFD deassign:
  // it waits for an SRCU grace period (1-8 ms on this host, most of the
  // earlier pause); the irqfd goes with this VM, after the resume.
  nic_.reset();
  const status closed = session_->hand_over();
  const std::uint64_t released = monotonic_ns();
  timing_.release_ns = released - entered;
  timing_.flush_ns = 0;
  auto call_off = [&](const error& why) -> error {
    // The restart is called off: the devices come back to this VM, the guest runs on.
    if (auto st = session_->call_off(*wiring_); !st)
      return error{st.code(), why.message() + "; and reclaiming the device failed: " + st.err().message()};
    attach_nic();
    rearm();
    resume_vcpu();
    return why;
  };
  if (!closed) return call_off(closed.err());
  auto vs = vcpu_->save(vm_->state_msrs());
  if (!vs) return call_off(vs.err());
  auto chip = vm_->save_irqchip();
  if (!chip) return call_off(chip.err());
  fill_state(s, std::move(*vs), *chip);
  if (auto st = add_vmm_state(*snap, to_session_state(s)); !st) return call_off(st.err());
  // The vCPU thread stays parked (paused, never resumed: this VMM has no
  // device any more) and is joined in the teardown, after the new VMM resumed:
  // the join (thread exit, ~60 us here) is not in the pause.
  timing_.get_state_ns = monotonic_ns() - released;
  timing_.save_ns = monotonic_ns() - entered;
  return snap;
}

status vmm::reclaim(const snapshot& snap) {
  auto w = make_wiring(irq_eventfd_.get());
  auto s = std::make_unique<session>(host_->sys());
  // Reconnecting drains what was posted while nobody owned the device into our
  // eventfd: the irqfd injects it into the LAPIC (restored before this).
  if (auto st = s->reclaim(snap, *w); !st) return st;
  wiring_ = std::move(w);
  session_ = std::move(s);
  attach_nic();
  opt_.nic = snap.devices[0].address;
  return {};
}

status vmm::take_over(snapshot snap) {
  if (nic_ || running_) return {errc::busy, "already running a guest"};
  auto s = vm_state_of(snap);
  if (!s) return s.err();
  if (s->vcpus.size() != 1 || snap.devices.size() != 1) return {errc::invalid, "this VMM runs one vCPU and one device"};
  if (s->ram_phys_offset != host_->guest_area_offset() + opt_.ram_slice || s->guest.ram_bytes != opt_.guest.ram_bytes)
    return {errc::invalid, "guest RAM of the handed-over VM is not the RAM this VMM mapped"};
  if (s->tsc_khz != tsc_khz_) return {errc::invalid, "TSC frequency differs"};
  if (s->route.gsi != opt_.route.gsi || s->route.guest_apic != opt_.route.guest_apic ||
      snap.devices[0].vectors != nic_spec(snap.devices[0].address, opt_.route).vectors)
    return {errc::invalid, "vector route differs from the prepared one"};
  // Guest RAM where this process mapped it (same file, same offsets).
  auto& mine = snap;
  const auto here = ram_regions();
  if (mine.ram.size() != here.size()) return {errc::invalid, "guest RAM regions differ"};
  for (std::size_t i = 0; i < here.size(); ++i) {
    if (mine.ram[i].guest != here[i].guest || mine.ram[i].io != here[i].io || mine.ram[i].bytes != here[i].bytes ||
        mine.ram[i].backing_offset != here[i].backing_offset)
      return {errc::invalid, fmt::format("guest RAM region {} is not the RAM this VMM mapped", i)};
    mine.ram[i].vaddr = here[i].vaddr;
  }
  const std::uint64_t t0 = monotonic_ns();
  opt_.guest = s->guest;
  if (auto st = vm_->restore_irqchip(s->irqchip); !st) return st;
  if (auto st = vcpu_->restore(s->vcpus[0]); !st) return st;
  const std::uint64_t restored = monotonic_ns();
  timing_.restore_ns = restored - t0;
  if (auto st = reclaim(mine); !st) return st;
  timing_.reclaim_ns = monotonic_ns() - restored;
  // The guest has not run since the pause: its counters are as it left them.
  const auto c = counters();
  timing_.guest_irqs_at_pause = c.interrupts;
  timing_.guest_last_irq_tsc = c.tsc_last_irq;
  const std::uint64_t before_start = monotonic_ns();
  if (auto st = start_vcpu(); !st) return st;
  const std::uint64_t started = monotonic_ns();
  timing_.start_ns = started - before_start;
  timing_.pause_ns = started - s->pause_started_ns;
  return {};
}

result<vm_state> vmm::save_for_restart(bool flush_irqfd) {
  if (!running_) return error{errc::busy, "nothing to hand over"};
  vm_state s;
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
  fill_state(s, std::move(*vs), *chip);
  timing_.save_ns = monotonic_ns() - stopped;
  return s;
}

carried_fds vmm::release_fds() {
  carried_fds c;
  nic_.reset();
  c.devices = std::move(session_);
  c.wiring = std::move(wiring_);
  c.irq_eventfd = std::move(irq_eventfd_);
  c.host = std::move(host_);
  return c;
}

status vmm::take_over_carried(const vm_state& s, carried_fds fds, bool rewire) {
  if (nic_ || running_) return {errc::busy, "already running a guest"};
  if (!fds.host || !fds.devices || !fds.wiring || !fds.irq_eventfd.valid()) return {errc::invalid, "nothing carried"};
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
  session_ = std::move(fds.devices);
  attach_nic();
  std::uint64_t repointed = restored;
  if (rewire) {
    for (const auto& r : ram_regions())
      if (auto st = nic_->repoint_dma(r.vaddr, r.io.value(), r.bytes); !st) return st;
    repointed = monotonic_ns();
    timing_.repoint_ns = repointed - restored;
    // The vector posts into a descriptor of the new VM (its own wiring), then
    // the old VM's descriptors go: a post that still lands in the old one
    // finds its irqfd. This VM's irqfd on the carried eventfd injects what
    // was signalled since the old one let go.
    const int efd = fds.irq_eventfd.get();
    auto w = make_wiring(efd);
    const auto spec = nic_spec(opt_.nic, opt_.route);
    if (auto st = nic_->set_trigger(opt_.route.msix_index, efd); !st) return st;
    if (auto st = w->connect({0, opt_.nic, session_->device_fd(0), spec.vectors[0]}, efd); !st) return st;
    fds.wiring.reset();
    wiring_ = std::move(w);
    if (auto st = vm_->irqfd(efd, opt_.route.gsi, true); !st) return st;
    // The prepared eventfd's irqfd stays assigned to an eventfd nobody signals.
    irq_eventfd_ = std::move(fds.irq_eventfd);
    timing_.rewire_ns = monotonic_ns() - repointed;
  } else {
    wiring_ = std::move(fds.wiring);
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
  // No state survived the owner: the snapshot is what this VMM knows itself.
  snapshot snap;
  snap.owner = t;
  snap.nr_vcpus = 1;
  snap.devices.push_back({opt_.nic, opt_.nic.devfn(), abi::irq_mode::none, nic_spec(opt_.nic, opt_.route).vectors});
  snap.ram = ram_regions();
  if (auto st = reclaim(snap); !st) return st;
  // The dead guest's ring is about to be overwritten: stop receiving first
  // (the driver's own CTRL write, as the rebooted guest does; no reset).
  if (auto st = nic_->bar0_write(KA_NIC_CTRL, 8, 0); !st) return st;
  // The link partner holds the wire until the guest runs (the caller sets the
  // rate again): a driver reading NEXT_SEQ while packets are dropped in front
  // of its CTRL.ENABLE would start one sequence number late.
  if (auto st = nic_->bar0_write(KA_NIC_RATE_PPS, 8, 0); !st) return st;
  const std::span<std::byte> ram{ram_, static_cast<std::size_t>(opt_.guest.ram_bytes)};
  if (auto st = load_guest(ram, image, opt_.guest, tsc_khz_); !st) return st;
  auto sregs = vcpu_->get_sregs();
  if (!sregs) return sregs.err();
  initial_sregs(*sregs);
  if (auto st = vcpu_->set_sregs(*sregs); !st) return st;
  if (auto st = vcpu_->set_regs(initial_regs()); !st) return st;
  return start_vcpu();
}

status vmm::arm_keepalive(const token& t) {
  if (!nic_) return {errc::busy, "no device"};
  if (t.is_nil()) return {errc::invalid, "nil token"};
  auto& sys = host_->sys();
  const int fd = session_->device_fd(0);
  if (armed_) {
    if (*armed_ == t) return {};
    if (auto st = abi::keepalive_leave(sys, fd, *armed_); !st) return st;
    armed_.reset();
  }
  auto e = abi::keepalive_enter(sys, fd, t);
  if (!e) return e.err();
  armed_ = t;
  return {};
}

status vmm::disarm_keepalive() {
  if (!nic_) return {errc::busy, "no device"};
  if (!armed_) return {};
  if (auto st = abi::keepalive_leave(host_->sys(), session_->device_fd(0), *armed_); !st) return st;
  armed_.reset();
  return {};
}

std::optional<token> vmm::armed_token() const { return armed_; }

result<abi::device_status> vmm::device_status() {
  if (!nic_) return error{errc::busy, "no device"};
  return abi::keepalive_status(host_->sys(), session_->device_fd(0));
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
