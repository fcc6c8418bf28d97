#include "kvm.hpp"
#include "kvm_abi.hpp"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include <fmt/format.h>

namespace keepalive::minivmm {
namespace {

status fail(const char* what) {
  const int e = errno;
  return {errc_from_errno(e), fmt::format("{}: {}", what, std::strerror(e))};
}

status check(int rc, const char* what) {
  if (rc < 0) return fail(what);
  return {};
}

// MSRs a vCPU restore carries (APIC base, EFER and the segment bases travel in sregs).
constexpr std::array<std::uint32_t, 13> wanted_msrs{
    0x174, 0x175, 0x176,                                     // SYSENTER_CS/ESP/EIP
    0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084,          // STAR LSTAR CSTAR SFMASK
    0xc0000102, 0xc0000103,                                  // KERNEL_GS_BASE TSC_AUX
    0x277, 0x1a0, 0x6e0, 0x3b,                               // PAT MISC_ENABLE TSC_DEADLINE TSC_ADJUST
};

}  // namespace

// ------------------------------------------------------------------ vCPU

kvm_vcpu::~kvm_vcpu() {
  if (run_ != nullptr) ::munmap(run_, map_bytes_);
}

int kvm_vcpu::run() noexcept {
  const int rc = ::ioctl(fd_.get(), KVM_RUN, 0);
  return rc < 0 ? -errno : rc;
}

result<kvm_sregs> kvm_vcpu::get_sregs() const {
  kvm_sregs s{};
  if (::ioctl(fd_.get(), KVM_GET_SREGS, &s) < 0) return fail("KVM_GET_SREGS").err();
  return s;
}
status kvm_vcpu::set_sregs(const kvm_sregs& s) const { return check(::ioctl(fd_.get(), KVM_SET_SREGS, &s), "KVM_SET_SREGS"); }
status kvm_vcpu::set_regs(const kvm_regs& r) const { return check(::ioctl(fd_.get(), KVM_SET_REGS, &r), "KVM_SET_REGS"); }

result<std::uint32_t> kvm_vcpu::tsc_khz() const {
  const int khz = ::ioctl(fd_.get(), KVM_GET_TSC_KHZ, 0);
  if (khz <= 0) return fail("KVM_GET_TSC_KHZ").err();
  return static_cast<std::uint32_t>(khz);
}

result<vcpu_state> kvm_vcpu::save(const std::vector<std::uint32_t>& msr_indices) const {
  vcpu_state s;
  const int fd = fd_.get();
  if (::ioctl(fd, KVM_GET_REGS, &s.regs) < 0) return fail("KVM_GET_REGS").err();
  if (::ioctl(fd, KVM_GET_SREGS, &s.sregs) < 0) return fail("KVM_GET_SREGS").err();
  kvm_abi::xsave xs{};
  if (::ioctl(fd, kvm_abi::get_xsave, &xs) < 0) return fail("KVM_GET_XSAVE").err();
  std::memcpy(s.xsave.data(), xs.region, sizeof xs.region);
  if (::ioctl(fd, KVM_GET_XCRS, &s.xcrs) < 0) return fail("KVM_GET_XCRS").err();
  if (::ioctl(fd, KVM_GET_LAPIC, &s.lapic) < 0) return fail("KVM_GET_LAPIC").err();
  if (::ioctl(fd, KVM_GET_VCPU_EVENTS, &s.events) < 0) return fail("KVM_GET_VCPU_EVENTS").err();
  if (::ioctl(fd, KVM_GET_MP_STATE, &s.mp_state) < 0) return fail("KVM_GET_MP_STATE").err();
  if (::ioctl(fd, KVM_GET_DEBUGREGS, &s.debugregs) < 0) return fail("KVM_GET_DEBUGREGS").err();

  kvm_abi::flex<kvm_abi::msrs_header, kvm_msr_entry> m{msr_indices.size()};
  m.header().nmsrs = static_cast<std::uint32_t>(msr_indices.size());
  for (std::size_t i = 0; i < msr_indices.size(); ++i) m.entries()[i].index = msr_indices[i];
  const int got = ::ioctl(fd, kvm_abi::get_msrs, m.arg());
  if (got < 0) return fail("KVM_GET_MSRS").err();
  if (static_cast<std::size_t>(got) != msr_indices.size())
    return error{errc::io, fmt::format("KVM_GET_MSRS read {} of {}", got, msr_indices.size())};
  for (std::size_t i = 0; i < msr_indices.size(); ++i) s.msrs.push_back({m.entries()[i].index, m.entries()[i].data});

  kvm_device_attr attr{};
  attr.group = KVM_VCPU_TSC_CTRL;
  attr.attr = KVM_VCPU_TSC_OFFSET;
  attr.addr = reinterpret_cast<std::uint64_t>(&s.tsc_offset);
  if (::ioctl(fd, KVM_GET_DEVICE_ATTR, &attr) < 0) return fail("KVM_GET_DEVICE_ATTR(TSC_OFFSET)").err();
  return s;
}

// Order as QEMU restores: registers, extended state, sregs, MSRs, TSC, then the
// run state, the local APIC and pending events last (they may reference the rest).
status kvm_vcpu::restore(const vcpu_state& s) const {
  const int fd = fd_.get();
  if (auto st = check(::ioctl(fd, KVM_SET_REGS, &s.regs), "KVM_SET_REGS"); !st) return st;
  kvm_abi::xsave xs{};
  std::memcpy(xs.region, s.xsave.data(), sizeof xs.region);
  if (auto st = check(::ioctl(fd, kvm_abi::set_xsave, &xs), "KVM_SET_XSAVE"); !st) return st;
  kvm_xcrs xcrs = s.xcrs;
  if (auto st = check(::ioctl(fd, KVM_SET_XCRS, &xcrs), "KVM_SET_XCRS"); !st) return st;
  if (auto st = check(::ioctl(fd, KVM_SET_SREGS, &s.sregs), "KVM_SET_SREGS"); !st) return st;

  kvm_abi::flex<kvm_abi::msrs_header, kvm_msr_entry> m{s.msrs.size()};
  m.header().nmsrs = static_cast<std::uint32_t>(s.msrs.size());
  for (std::size_t i = 0; i < s.msrs.size(); ++i) {
    m.entries()[i].index = s.msrs[i].index;
    m.entries()[i].data = s.msrs[i].value;
  }
  const int set = ::ioctl(fd, kvm_abi::set_msrs, m.arg());
  if (set < 0) return fail("KVM_SET_MSRS");
  if (static_cast<std::size_t>(set) != s.msrs.size())
    return {errc::io, fmt::format("KVM_SET_MSRS refused MSR {:#x}", s.msrs[static_cast<std::size_t>(set)].index)};

  std::uint64_t offset = s.tsc_offset;
  kvm_device_attr attr{};
  attr.group = KVM_VCPU_TSC_CTRL;
  attr.attr = KVM_VCPU_TSC_OFFSET;
  attr.addr = reinterpret_cast<std::uint64_t>(&offset);
  if (auto st = check(::ioctl(fd, KVM_SET_DEVICE_ATTR, &attr), "KVM_SET_DEVICE_ATTR(TSC_OFFSET)"); !st) return st;

  kvm_mp_state mp = s.mp_state;
  if (auto st = check(::ioctl(fd, KVM_SET_MP_STATE, &mp), "KVM_SET_MP_STATE"); !st) return st;
  kvm_lapic_state lapic = s.lapic;
  if (auto st = check(::ioctl(fd, KVM_SET_LAPIC, &lapic), "KVM_SET_LAPIC"); !st) return st;
  kvm_vcpu_events ev = s.events;
  ev.flags &= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR | KVM_VCPUEVENT_VALID_SHADOW |
              KVM_VCPUEVENT_VALID_SMM;
  if (auto st = check(::ioctl(fd, KVM_SET_VCPU_EVENTS, &ev), "KVM_SET_VCPU_EVENTS"); !st) return st;
  kvm_debugregs dr = s.debugregs;
  return check(::ioctl(fd, KVM_SET_DEBUGREGS, &dr), "KVM_SET_DEBUGREGS");
}

// ------------------------------------------------------------------ VM

result<std::unique_ptr<kvm_vm>> kvm_vm::create() {
  std::unique_ptr<kvm_vm> vm{new kvm_vm};
  vm->kvm_.reset(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!vm->kvm_.valid()) return fail("open /dev/kvm").err();
  if (::ioctl(vm->kvm_.get(), KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
    return error{errc::not_supported, "KVM API version"};
  for (const int cap : {KVM_CAP_IRQCHIP, KVM_CAP_IRQFD, KVM_CAP_IRQ_ROUTING, KVM_CAP_USER_MEMORY, KVM_CAP_IMMEDIATE_EXIT,
                        KVM_CAP_VCPU_EVENTS, KVM_CAP_XSAVE, KVM_CAP_XCRS, KVM_CAP_DEBUGREGS, KVM_CAP_SIGNAL_MSI})
    if (::ioctl(vm->kvm_.get(), KVM_CHECK_EXTENSION, cap) <= 0)
      return error{errc::not_supported, fmt::format("KVM capability {} missing", cap)};
  const int run_bytes = ::ioctl(vm->kvm_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_bytes <= 0) return fail("KVM_GET_VCPU_MMAP_SIZE").err();
  vm->run_bytes_ = static_cast<std::size_t>(run_bytes);

  // Supported CPUID (grow until it fits).
  for (std::uint32_t n = 64; n <= 4096; n *= 2) {
    kvm_abi::flex<kvm_abi::cpuid2_header, kvm_cpuid_entry2> c{n};
    c.header().nent = n;
    if (::ioctl(vm->kvm_.get(), kvm_abi::get_supported_cpuid, c.arg()) == 0) {
      vm->cpuid_.assign(c.entries(), c.entries() + c.header().nent);
      break;
    }
    if (errno != E2BIG) return fail("KVM_GET_SUPPORTED_CPUID").err();
  }
  if (vm->cpuid_.empty()) return error{errc::io, "KVM_GET_SUPPORTED_CPUID: no entries"};

  // MSR index list: keep the wanted MSRs this KVM saves.
  kvm_abi::msr_list_header probe{};
  (void)::ioctl(vm->kvm_.get(), kvm_abi::get_msr_index_list, &probe);  // E2BIG, sets nmsrs
  kvm_abi::flex<kvm_abi::msr_list_header, std::uint32_t> list{probe.nmsrs};
  list.header().nmsrs = probe.nmsrs;
  if (::ioctl(vm->kvm_.get(), kvm_abi::get_msr_index_list, list.arg()) < 0) return fail("KVM_GET_MSR_INDEX_LIST").err();
  const std::uint32_t* first = list.entries();
  const std::uint32_t* last = first + list.header().nmsrs;
  for (const std::uint32_t w : wanted_msrs)
    if (std::find(first, last, w) != last) vm->msrs_.push_back(w);

  vm->vm_.reset(::ioctl(vm->kvm_.get(), KVM_CREATE_VM, 0));
  if (!vm->vm_.valid()) return fail("KVM_CREATE_VM").err();
  if (auto st = check(::ioctl(vm->vm_.get(), KVM_SET_TSS_ADDR, 0xfffbd000ul), "KVM_SET_TSS_ADDR"); !st) return st.err();
  if (auto st = check(::ioctl(vm->vm_.get(), KVM_CREATE_IRQCHIP, 0), "KVM_CREATE_IRQCHIP"); !st) return st.err();
  return vm;
}

status kvm_vm::map_memory(std::uint32_t slot, std::uint64_t gpa, void* host, std::uint64_t bytes) const {
  kvm_userspace_memory_region r{};
  r.slot = slot;
  r.guest_phys_addr = gpa;
  r.memory_size = bytes;
  r.userspace_addr = reinterpret_cast<std::uint64_t>(host);
  return check(::ioctl(vm_.get(), KVM_SET_USER_MEMORY_REGION, &r), "KVM_SET_USER_MEMORY_REGION");
}

result<std::unique_ptr<kvm_vcpu>> kvm_vm::create_vcpu(unsigned id) const {
  unique_fd fd{::ioctl(vm_.get(), KVM_CREATE_VCPU, static_cast<unsigned long>(id))};
  if (!fd.valid()) return fail("KVM_CREATE_VCPU").err();
  void* run = ::mmap(nullptr, run_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (run == MAP_FAILED) return fail("mmap kvm_run").err();
  auto vcpu = std::make_unique<kvm_vcpu>(std::move(fd), static_cast<kvm_run*>(run), run_bytes_, id);
  kvm_abi::flex<kvm_abi::cpuid2_header, kvm_cpuid_entry2> c{cpuid_.size()};
  c.header().nent = static_cast<std::uint32_t>(cpuid_.size());
  std::copy(cpuid_.begin(), cpuid_.end(), c.entries());
  for (std::uint32_t i = 0; i < c.header().nent; ++i)
    if (c.entries()[i].function == 1)
      c.entries()[i].ebx = (c.entries()[i].ebx & 0x00ffffffu) | (id << 24);  // initial APIC ID
  if (auto st = check(::ioctl(vcpu->fd(), kvm_abi::set_cpuid2, c.arg()), "KVM_SET_CPUID2"); !st) return st.err();
  return vcpu;
}

status kvm_vm::set_msi_route(std::uint32_t gsi, std::uint64_t address, std::uint32_t data) {
  kvm_irq_routing_entry e{};
  e.gsi = gsi;
  e.type = KVM_IRQ_ROUTING_MSI;
  e.u.msi.address_lo = static_cast<std::uint32_t>(address);
  e.u.msi.address_hi = static_cast<std::uint32_t>(address >> 32);
  e.u.msi.data = data;
  auto it = std::find_if(routes_.begin(), routes_.end(), [&](const auto& r) { return r.gsi == gsi; });
  if (it != routes_.end())
    *it = e;
  else
    routes_.push_back(e);
  kvm_abi::flex<kvm_abi::irq_routing_header, kvm_irq_routing_entry> t{routes_.size()};
  t.header().nr = static_cast<std::uint32_t>(routes_.size());
  std::copy(routes_.begin(), routes_.end(), t.entries());
  return check(::ioctl(vm_.get(), kvm_abi::set_gsi_routing, t.arg()), "KVM_SET_GSI_ROUTING");
}

status kvm_vm::irqfd(int eventfd, std::uint32_t gsi, bool assign) const {
  kvm_irqfd req{};
  req.fd = static_cast<std::uint32_t>(eventfd);
  req.gsi = gsi;
  req.flags = assign ? 0u : KVM_IRQFD_FLAG_DEASSIGN;
  return check(::ioctl(vm_.get(), KVM_IRQFD, &req), assign ? "KVM_IRQFD" : "KVM_IRQFD(DEASSIGN)");
}

status kvm_vm::signal_msi(std::uint64_t address, std::uint32_t data) const {
  kvm_msi m{};
  m.address_lo = static_cast<std::uint32_t>(address);
  m.address_hi = static_cast<std::uint32_t>(address >> 32);
  m.data = data;
  const int rc = ::ioctl(vm_.get(), KVM_SIGNAL_MSI, &m);
  if (rc < 0) return fail("KVM_SIGNAL_MSI");
  if (rc == 0) return {errc::io, "KVM_SIGNAL_MSI: delivery blocked by the guest"};
  return {};
}

result<irqchip_state> kvm_vm::save_irqchip() const {
  irqchip_state s;
  for (std::uint32_t id = 0; id < 3; ++id) {
    s.chips[id].chip_id = id;
    if (::ioctl(vm_.get(), KVM_GET_IRQCHIP, &s.chips[id]) < 0) return fail("KVM_GET_IRQCHIP").err();
  }
  return s;
}

status kvm_vm::restore_irqchip(const irqchip_state& s) const {
  for (auto chip : s.chips)
    if (auto st = check(::ioctl(vm_.get(), KVM_SET_IRQCHIP, &chip), "KVM_SET_IRQCHIP"); !st) return st;
  return {};
}

}  // namespace keepalive::minivmm
