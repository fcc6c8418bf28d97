// User-space build of kernel/linux/kvm/keepalive_pi.h (the file patch 0009 adds as
// arch/x86/kvm/vmx/keepalive_pi.h): the kernel primitives it uses, mapped to GCC
// __atomic builtins with the kernel's x86 semantics (RMW bit ops and xchg are full
// barriers, READ_ONCE/WRITE_ONCE single untorn accesses), and struct pi_desc with the
// layout of arch/x86/include/asm/posted_intr.h (pir[], control; NV/NDST live in
// control, which the header only touches as a whole).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <keepalive/hw/posted_intr.hpp>

namespace keepalive::kvm_pi {

using u64 = std::uint64_t;
static_assert(std::is_same_v<u64, unsigned long>, "LP64: the kernel's PIR words are u64-sized longs");

// The kernel's names, as macros where the kernel has macros.
#define BITS_PER_LONG 64
#define NR_PIR_WORDS (256 / BITS_PER_LONG)
#define POSTED_INTR_ON 0
#define POSTED_INTR_SN 1
#define READ_ONCE(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define WRITE_ONCE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define xchg(p, v) __atomic_exchange_n((p), (v), __ATOMIC_SEQ_CST)
#define smp_mb__after_atomic() __atomic_thread_fence(__ATOMIC_SEQ_CST)

struct alignas(64) pi_desc {
  unsigned long pir[NR_PIR_WORDS];
  u64 control;
  std::uint32_t rsvd[6];
};

inline unsigned long __ffs(unsigned long word) { return static_cast<unsigned long>(__builtin_ctzl(word)); }
inline unsigned long bit_mask(long nr) { return 1UL << (static_cast<unsigned long>(nr) % BITS_PER_LONG); }
inline unsigned long* bit_word(long nr, unsigned long* addr) { return addr + nr / BITS_PER_LONG; }
inline const unsigned long* bit_word(long nr, const unsigned long* addr) { return addr + nr / BITS_PER_LONG; }

inline void set_bit(long nr, unsigned long* addr) { __atomic_fetch_or(bit_word(nr, addr), bit_mask(nr), __ATOMIC_SEQ_CST); }
inline void clear_bit(long nr, unsigned long* addr) {
  __atomic_fetch_and(bit_word(nr, addr), ~bit_mask(nr), __ATOMIC_SEQ_CST);
}
inline bool test_bit(long nr, const unsigned long* addr) {
  return (__atomic_load_n(bit_word(nr, addr), __ATOMIC_RELAXED) & bit_mask(nr)) != 0;
}
inline bool test_and_set_bit(long nr, unsigned long* addr) {
  return (__atomic_fetch_or(bit_word(nr, addr), bit_mask(nr), __ATOMIC_SEQ_CST) & bit_mask(nr)) != 0;
}
inline bool test_and_clear_bit(long nr, unsigned long* addr) {
  return (__atomic_fetch_and(bit_word(nr, addr), ~bit_mask(nr), __ATOMIC_SEQ_CST) & bit_mask(nr)) != 0;
}

#include "../../kernel/linux/kvm/keepalive_pi.h"

// The kernel's struct pi_desc and the library's hw::posted_intr_desc are the same 64 bytes.
static_assert(sizeof(pi_desc) == hw::posted_intr_desc::size && alignof(pi_desc) == 64);
static_assert(offsetof(pi_desc, pir) == hw::posted_intr_desc::pir_offset);
static_assert(offsetof(pi_desc, control) == hw::posted_intr_desc::control_offset);
static_assert(offsetof(pi_desc, rsvd) == hw::posted_intr_desc::reserved_offset);
static_assert(POSTED_INTR_ON == hw::pi_control::layout::on.lsb && hw::pi_control::layout::on.width == 1);
static_assert(POSTED_INTR_SN == hw::pi_control::layout::sn.lsb && hw::pi_control::layout::sn.width == 1);
static_assert(NR_PIR_WORDS == 4);

// The header's view of a descriptor the library model owns (both are plain u64 words).
inline pi_desc* as_kernel(hw::posted_intr_desc& d) noexcept { return reinterpret_cast<pi_desc*>(&d); }

}  // namespace keepalive::kvm_pi
