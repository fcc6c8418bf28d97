#include "handover.hpp"

#include <cstring>
#include <string_view>
#include <type_traits>

#include <fmt/format.h>

namespace keepalive::minivmm {
namespace {

constexpr std::string_view extra_magic = "minivmm-vm-v1";

struct guest_wire {
  std::uint64_t ram_bytes, bar0_gpa;
  std::uint32_t ring_entries, buffer_bytes, payload_bytes, irq_mod_pkts, irq_mod_usec, verify;
};
static_assert(sizeof(guest_wire) == 40);
struct vm_wire {
  char magic[16];
  std::uint64_t ram_phys_offset;
  std::uint32_t tsc_khz, reserved;
  guest_wire guest;
  std::uint32_t msix_index, guest_vector, guest_apic, gsi;
  std::uint64_t pause_started_ns;
};
static_assert(sizeof(vm_wire) == 96);
static_assert(offsetof(vm_wire, guest) == 32 && offsetof(vm_wire, msix_index) == 72 && offsetof(vm_wire, pause_started_ns) == 88);
struct msr_wire {  // struct kvm_msr_entry
  std::uint32_t index, reserved;
  std::uint64_t data;
};
static_assert(sizeof(msr_wire) == 16);

template <typename T>
std::vector<std::byte> bytes_of(const T& v) {
  static_assert(std::is_trivially_copyable_v<T>);
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  return {p, p + sizeof v};
}

template <typename T>
bool read_exact(std::span<const std::byte> b, T& out) {
  static_assert(std::is_trivially_copyable_v<T>);
  if (b.size() != sizeof out) return false;
  std::memcpy(&out, b.data(), sizeof out);
  return true;
}

error bad(std::string what) { return {errc::protocol, "minivmm VM state: " + std::move(what)}; }

}  // namespace

keepalive::vmm_state to_session_state(const vm_state& s) {
  keepalive::vmm_state out;
  out.nr_vcpus = static_cast<std::uint32_t>(s.vcpus.size());
  for (std::uint32_t n = 0; n < out.nr_vcpus; ++n) {
    const auto& v = s.vcpus[n];
    out.vcpu_state.push_back({n, vcpu_state_tag::regs, bytes_of(v.regs)});
    out.vcpu_state.push_back({n, vcpu_state_tag::sregs, bytes_of(v.sregs)});
    out.vcpu_state.push_back({n, vcpu_state_tag::xsave, bytes_of(v.xsave)});
    out.vcpu_state.push_back({n, vcpu_state_tag::xcrs, bytes_of(v.xcrs)});
    out.vcpu_state.push_back({n, vcpu_state_tag::lapic, bytes_of(v.lapic)});
    out.vcpu_state.push_back({n, vcpu_state_tag::events, bytes_of(v.events)});
    out.vcpu_state.push_back({n, vcpu_state_tag::mp_state, bytes_of(v.mp_state)});
    out.vcpu_state.push_back({n, vcpu_state_tag::debugregs, bytes_of(v.debugregs)});
    std::vector<std::byte> msrs;
    for (const auto& m : v.msrs) {
      const auto e = bytes_of(msr_wire{m.index, 0, m.value});
      msrs.insert(msrs.end(), e.begin(), e.end());
    }
    out.vcpu_state.push_back({n, vcpu_state_tag::msrs, std::move(msrs)});
    out.vcpu_state.push_back({n, tsc_offset_tag, bytes_of(v.tsc_offset)});
  }
  vm_wire w{};
  std::memcpy(w.magic, extra_magic.data(), extra_magic.size());
  w.ram_phys_offset = s.ram_phys_offset;
  w.tsc_khz = s.tsc_khz;
  w.guest = {s.guest.ram_bytes, s.guest.bar0_gpa, s.guest.ring_entries, s.guest.buffer_bytes, s.guest.payload_bytes,
             s.guest.irq_mod_pkts, s.guest.irq_mod_usec, static_cast<std::uint32_t>(s.guest.verify)};
  w.msix_index = s.route.msix_index;
  w.guest_vector = s.route.guest_vector.value();
  w.guest_apic = s.route.guest_apic.value();
  w.gsi = s.route.gsi;
  w.pause_started_ns = s.pause_started_ns;
  out.extra = bytes_of(w);
  const auto chips = bytes_of(s.irqchip.chips);
  out.extra.insert(out.extra.end(), chips.begin(), chips.end());
  return out;
}

result<vm_state> vm_state_of(const snapshot& snap) {
  vm_state s;
  vm_wire w{};
  if (snap.extra.size() != sizeof w + sizeof s.irqchip.chips) return bad(fmt::format("extra is {} bytes", snap.extra.size()));
  const std::span<const std::byte> extra{snap.extra};
  std::memcpy(&w, extra.data(), sizeof w);
  if (std::string_view{w.magic, strnlen(w.magic, sizeof w.magic)} != extra_magic || w.reserved != 0)
    return bad("extra is not minivmm-vm-v1");
  if (w.guest.verify > MINIVMM_VERIFY_REFERENCE || w.guest_vector > 0xff) return bad("guest record");
  (void)read_exact(extra.subspan(sizeof w), s.irqchip.chips);
  s.ram_phys_offset = w.ram_phys_offset;
  s.tsc_khz = w.tsc_khz;
  s.guest.ram_bytes = w.guest.ram_bytes;
  s.guest.bar0_gpa = w.guest.bar0_gpa;
  s.guest.ring_entries = w.guest.ring_entries;
  s.guest.buffer_bytes = w.guest.buffer_bytes;
  s.guest.payload_bytes = w.guest.payload_bytes;
  s.guest.irq_mod_pkts = w.guest.irq_mod_pkts;
  s.guest.irq_mod_usec = w.guest.irq_mod_usec;
  s.guest.verify = static_cast<minivmm_verify_mode>(w.guest.verify);
  s.route.msix_index = w.msix_index;
  s.route.guest_vector = vector{static_cast<std::uint8_t>(w.guest_vector)};
  s.route.guest_apic = apic_id{w.guest_apic};
  s.route.gsi = w.gsi;
  s.pause_started_ns = w.pause_started_ns;
  if (auto st = validate(s.guest); !st) return bad("guest config: " + st.err().context());

  if (snap.nr_vcpus == 0) return bad("no vCPU");
  s.vcpus.resize(snap.nr_vcpus);
  for (std::uint32_t n = 0; n < snap.nr_vcpus; ++n) {
    auto& v = s.vcpus[n];
    auto need = [&](vcpu_state_tag tag, auto& out) -> status {
      const auto* b = snap.find(n, tag);
      if (b == nullptr || !read_exact(std::span<const std::byte>{b->bytes}, out))
        return bad(fmt::format("vCPU {}: {} missing or not {} bytes", n, vcpu_state_tag_name(tag), sizeof out));
      return {};
    };
    for (auto st : {need(vcpu_state_tag::regs, v.regs), need(vcpu_state_tag::sregs, v.sregs),
                    need(vcpu_state_tag::xsave, v.xsave), need(vcpu_state_tag::xcrs, v.xcrs),
                    need(vcpu_state_tag::lapic, v.lapic), need(vcpu_state_tag::events, v.events),
                    need(vcpu_state_tag::mp_state, v.mp_state), need(vcpu_state_tag::debugregs, v.debugregs),
                    need(tsc_offset_tag, v.tsc_offset)})
      if (!st) return st.err();
    const auto* msrs = snap.find(n, vcpu_state_tag::msrs);
    if (msrs == nullptr || msrs->bytes.size() % sizeof(msr_wire) != 0) return bad(fmt::format("vCPU {}: MSR list", n));
    for (std::size_t off = 0; off < msrs->bytes.size(); off += sizeof(msr_wire)) {
      msr_wire m{};
      std::memcpy(&m, msrs->bytes.data() + off, sizeof m);
      if (m.reserved != 0) return bad(fmt::format("vCPU {}: MSR {:#x} reserved bits", n, m.index));
      v.msrs.push_back({m.index, m.data});
    }
  }
  if (snap.vcpu_state.size() != 10u * snap.nr_vcpus) return bad("unknown vCPU blobs");
  return s;
}

result<snapshot> snapshot_without_devices(const vm_state& s) {
  snapshot snap;
  snap.owner = token::generate();
  if (auto st = add_vmm_state(snap, to_session_state(s)); !st) return st.err();
  return snap;
}

}  // namespace keepalive::minivmm
