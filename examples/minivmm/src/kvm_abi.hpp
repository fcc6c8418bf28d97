// KVM structs with a trailing flexible array, laid out as the kernel (C) sees
// them. Linux 6.1's uapi declares those arrays with __DECLARE_FLEX_ARRAY, which
// in C++ adds an empty struct before the array: sizeof and the array offset
// grow (kvm_msrs 8 -> 16), and so do the ioctl numbers built from sizeof. These
// headers and commands are the C ones, checked against the kernel's values.
#pragma once

#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace keepalive::minivmm::kvm_abi {

struct cpuid2_header {  // struct kvm_cpuid2 without entries[]
  std::uint32_t nent, padding;
};
struct msrs_header {  // struct kvm_msrs
  std::uint32_t nmsrs, pad;
};
struct msr_list_header {  // struct kvm_msr_list
  std::uint32_t nmsrs;
};
struct irq_routing_header {  // struct kvm_irq_routing
  std::uint32_t nr, flags;
};
struct xsave {  // struct kvm_xsave (legacy 4 KiB form)
  std::uint32_t region[1024];
};

inline constexpr unsigned long get_supported_cpuid = _IOWR(KVMIO, 0x05, cpuid2_header);
inline constexpr unsigned long set_cpuid2 = _IOW(KVMIO, 0x90, cpuid2_header);
inline constexpr unsigned long get_msrs = _IOWR(KVMIO, 0x88, msrs_header);
inline constexpr unsigned long set_msrs = _IOW(KVMIO, 0x89, msrs_header);
inline constexpr unsigned long get_msr_index_list = _IOWR(KVMIO, 0x02, msr_list_header);
inline constexpr unsigned long set_gsi_routing = _IOW(KVMIO, 0x6a, irq_routing_header);
inline constexpr unsigned long get_xsave = _IOR(KVMIO, 0xa4, xsave);
inline constexpr unsigned long set_xsave = _IOW(KVMIO, 0xa5, xsave);

static_assert(get_supported_cpuid == 0xc008ae05ul && set_cpuid2 == 0x4008ae90ul);
static_assert(get_msrs == 0xc008ae88ul && set_msrs == 0x4008ae89ul && get_msr_index_list == 0xc004ae02ul);
static_assert(set_gsi_routing == 0x4008ae6aul && get_xsave == 0x9000aea4ul && set_xsave == 0x5000aea5ul);
static_assert(sizeof(kvm_cpuid_entry2) == 40 && sizeof(kvm_msr_entry) == 16 && sizeof(kvm_irq_routing_entry) == 48);
// Structs without a flexible array keep their C size in C++.
static_assert(sizeof(kvm_sregs) == 312 && sizeof(kvm_lapic_state) == 1024 && sizeof(kvm_vcpu_events) == 64);
static_assert(sizeof(kvm_irqchip) == 520 && sizeof(kvm_xcrs) == 392 && sizeof(kvm_debugregs) == 128);

// A header followed by n entries, as one ioctl argument.
template <typename Header, typename Entry>
class flex {
 public:
  explicit flex(std::size_t n) : bytes_(sizeof(Header) + n * sizeof(Entry)) {}
  [[nodiscard]] Header& header() noexcept { return *reinterpret_cast<Header*>(bytes_.data()); }
  [[nodiscard]] Entry* entries() noexcept { return reinterpret_cast<Entry*>(bytes_.data() + sizeof(Header)); }
  [[nodiscard]] void* arg() noexcept { return bytes_.data(); }

 private:
  std::vector<std::byte> bytes_;  // operator new alignment suits every header and entry
};

}  // namespace keepalive::minivmm::kvm_abi
