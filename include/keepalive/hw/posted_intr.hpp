// Posted-interrupt descriptor (PID): 64 bytes, 64-byte aligned. Linux: struct pi_desc
// (arch/x86/include/asm/posted_intr.h) and arch/x86/kvm/vmx/posted_intr.c.
//
//   bytes 0-31   PIR: one bit per vector 0-255
//   bytes 32-39  control: ON bit 0, SN bit 1, NV bits 23:16 (byte 34), NDST bits 63:32 (36-39)
//   bytes 40-63  reserved
//
// A PID lives in memory shared with the IOMMU (another thread or process), so everything
// after publication goes through std::atomic_ref; the *_nonatomic helpers are for setting a
// descriptor up before any IRTE or vCPU points at it.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <type_traits>

#include <keepalive/hw/apic.hpp>
#include <keepalive/hw/bits.hpp>
#include <keepalive/types.hpp>

namespace keepalive::hw {

// A set of vectors 0-255 (PIR contents), iterable in ascending order.
class vector_set {
 public:
  using words_type = std::array<std::uint64_t, 4>;

  class iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = keepalive::vector;
    using difference_type = std::ptrdiff_t;
    using pointer = void;
    using reference = keepalive::vector;

    constexpr iterator() = default;
    [[nodiscard]] constexpr keepalive::vector operator*() const noexcept {
      return keepalive::vector{static_cast<std::uint8_t>(pos_)};
    }
    constexpr iterator& operator++() noexcept {
      pos_ = set_->next_from(pos_ + 1);
      return *this;
    }
    constexpr iterator operator++(int) noexcept {
      iterator t = *this;
      ++*this;
      return t;
    }
    friend constexpr bool operator==(const iterator& a, const iterator& b) noexcept { return a.pos_ == b.pos_; }

   private:
    friend class vector_set;
    constexpr iterator(const vector_set* s, unsigned pos) noexcept : set_{s}, pos_{pos} {}
    const vector_set* set_{nullptr};
    unsigned pos_{256};
  };

  constexpr vector_set() = default;
  [[nodiscard]] static constexpr vector_set from_words(const words_type& w) noexcept {
    vector_set s;
    s.w_ = w;
    return s;
  }
  [[nodiscard]] constexpr const words_type& words() const noexcept { return w_; }

  [[nodiscard]] constexpr bool test(keepalive::vector v) const noexcept {
    return ((w_[v.value() / 64u] >> (v.value() % 64u)) & 1u) != 0;
  }
  constexpr void set(keepalive::vector v) noexcept { w_[v.value() / 64u] |= std::uint64_t{1} << (v.value() % 64u); }
  constexpr void reset(keepalive::vector v) noexcept {
    w_[v.value() / 64u] &= ~(std::uint64_t{1} << (v.value() % 64u));
  }
  [[nodiscard]] constexpr bool empty() const noexcept { return (w_[0] | w_[1] | w_[2] | w_[3]) == 0; }
  [[nodiscard]] constexpr unsigned count() const noexcept {
    unsigned n = 0;
    for (auto w : w_) n += static_cast<unsigned>(std::popcount(w));
    return n;
  }
  [[nodiscard]] constexpr iterator begin() const noexcept { return {this, next_from(0)}; }
  [[nodiscard]] constexpr iterator end() const noexcept { return {this, 256}; }

  constexpr vector_set& operator|=(const vector_set& o) noexcept {
    for (std::size_t i = 0; i < 4; ++i) w_[i] |= o.w_[i];
    return *this;
  }
  constexpr vector_set& operator&=(const vector_set& o) noexcept {
    for (std::size_t i = 0; i < 4; ++i) w_[i] &= o.w_[i];
    return *this;
  }
  [[nodiscard]] friend constexpr vector_set operator|(vector_set a, const vector_set& b) noexcept { return a |= b; }
  [[nodiscard]] friend constexpr vector_set operator&(vector_set a, const vector_set& b) noexcept { return a &= b; }
  friend constexpr bool operator==(const vector_set&, const vector_set&) = default;

 private:
  // First set vector >= from, or 256.
  [[nodiscard]] constexpr unsigned next_from(unsigned from) const noexcept {
    while (from < 256) {
      const std::uint64_t w = w_[from / 64] >> (from % 64);
      if (w != 0) return from + static_cast<unsigned>(std::countr_zero(w));
      from = (from / 64 + 1) * 64;
    }
    return 256;
  }
  words_type w_{};
};

// The control qword (bytes 32-39) as a value.
class pi_control {
 public:
  struct layout {
    static constexpr bit_field on = bit(0);
    static constexpr bit_field sn = bit(1);
    static constexpr bit_field nv = bits(23, 16);
    static constexpr bit_field ndst = bits(63, 32);
    static constexpr std::uint64_t reserved = bits(15, 2).mask() | bits(31, 24).mask();
  };

  constexpr pi_control() = default;
  [[nodiscard]] static constexpr pi_control from_raw(std::uint64_t v) noexcept {
    pi_control c;
    c.raw_ = v;
    return c;
  }
  [[nodiscard]] constexpr std::uint64_t raw() const noexcept { return raw_; }

  [[nodiscard]] constexpr bool on() const noexcept { return layout::on.extract(raw_) != 0; }
  [[nodiscard]] constexpr bool sn() const noexcept { return layout::sn.extract(raw_) != 0; }
  [[nodiscard]] constexpr keepalive::vector nv() const noexcept {
    return keepalive::vector{static_cast<std::uint8_t>(layout::nv.extract(raw_))};
  }
  [[nodiscard]] constexpr std::uint32_t ndst() const noexcept {
    return static_cast<std::uint32_t>(layout::ndst.extract(raw_));
  }
  [[nodiscard]] constexpr apic_id destination(apic_mode mode) const noexcept {
    return decode_destination(ndst(), mode);
  }
  [[nodiscard]] constexpr bool reserved_bits_set() const noexcept { return (raw_ & layout::reserved) != 0; }

  [[nodiscard]] constexpr pi_control with_on(bool v) const noexcept { return from_raw(layout::on.insert(raw_, v)); }
  [[nodiscard]] constexpr pi_control with_sn(bool v) const noexcept { return from_raw(layout::sn.insert(raw_, v)); }
  [[nodiscard]] constexpr pi_control with_nv(keepalive::vector v) const noexcept {
    return from_raw(layout::nv.insert(raw_, v.value()));
  }
  [[nodiscard]] constexpr pi_control with_ndst(std::uint32_t v) const noexcept {
    return from_raw(layout::ndst.insert(raw_, v));
  }
  [[nodiscard]] constexpr pi_control with_destination(apic_id id, apic_mode mode) const noexcept {
    return with_ndst(encode_destination(id, mode));
  }
  friend constexpr bool operator==(const pi_control&, const pi_control&) = default;

 private:
  std::uint64_t raw_{0};
};

struct post_result {
  bool pir_was_set_already{false};  // the vector was already pending
  bool notify{false};               // this post set ON: send NV to NDST
  pi_control control{};             // control as this post left it (NV/NDST to notify with)
  friend constexpr bool operator==(const post_result&, const post_result&) = default;
};

class alignas(64) posted_intr_desc {
 public:
  static constexpr std::size_t size = 64;
  static constexpr std::size_t pir_offset = 0;
  static constexpr std::size_t control_offset = 32;
  static constexpr std::size_t nv_byte_offset = 34;
  static constexpr std::size_t ndst_byte_offset = 36;
  static constexpr std::size_t reserved_offset = 40;

  constexpr posted_intr_desc() = default;

  // ---- Before publication (plain accesses) ----
  constexpr void init_nonatomic(keepalive::vector nv, std::uint32_t ndst, bool sn = false) noexcept {
    for (auto& w : pir_) w = 0;
    for (auto& w : reserved_) w = 0;
    control_ = pi_control{}.with_nv(nv).with_ndst(ndst).with_sn(sn).raw();
  }
  constexpr void set_nv_nonatomic(keepalive::vector nv) noexcept {
    control_ = pi_control::from_raw(control_).with_nv(nv).raw();
  }
  constexpr void set_ndst_nonatomic(std::uint32_t ndst) noexcept {
    control_ = pi_control::from_raw(control_).with_ndst(ndst).raw();
  }
  constexpr void set_sn_nonatomic(bool sn) noexcept { control_ = pi_control::from_raw(control_).with_sn(sn).raw(); }
  constexpr void set_on_nonatomic(bool on) noexcept { control_ = pi_control::from_raw(control_).with_on(on).raw(); }
  constexpr void set_pir_nonatomic(const vector_set& s) noexcept {
    for (std::size_t i = 0; i < 4; ++i) pir_[i] = s.words()[i];
  }
  [[nodiscard]] constexpr pi_control control_nonatomic() const noexcept { return pi_control::from_raw(control_); }
  [[nodiscard]] constexpr vector_set pir_nonatomic() const noexcept {
    return vector_set::from_words({pir_[0], pir_[1], pir_[2], pir_[3]});
  }
  [[nodiscard]] constexpr std::array<std::uint64_t, 3> reserved_nonatomic() const noexcept {
    return {reserved_[0], reserved_[1], reserved_[2]};
  }

  // ---- Shared (atomic, sequentially consistent) ----
  [[nodiscard]] pi_control control() const noexcept { return pi_control::from_raw(ref(control_).load()); }
  // Snapshot of PIR, word by word: each word is atomic, the four together are not.
  [[nodiscard]] vector_set pending() const noexcept {
    return vector_set::from_words({ref(pir_[0]).load(), ref(pir_[1]).load(), ref(pir_[2]).load(), ref(pir_[3]).load()});
  }

  // What the IOMMU does for a posted IRTE (VT-d 5.2.3): set the PIR bit; then, if ON is
  // clear and (SN is clear or the IRTE is urgent), set ON and send a notification.
  post_result post(keepalive::vector v, bool urgent) noexcept {
    const std::uint64_t mask = std::uint64_t{1} << (v.value() % 64u);
    const std::uint64_t before = ref(pir_[v.value() / 64u]).fetch_or(mask);
    post_result r{(before & mask) != 0, false, {}};
    auto ctl = ref(control_);
    std::uint64_t old = ctl.load();
    for (;;) {
      const pi_control c = pi_control::from_raw(old);
      if (c.on() || (c.sn() && !urgent)) {
        r.control = c;
        return r;
      }
      const pi_control n = c.with_on(true);
      if (ctl.compare_exchange_weak(old, n.raw())) {
        r.notify = true;
        r.control = n;
        return r;
      }
    }
  }

  // Return the previous SN.
  bool set_sn() noexcept {
    return (ref(control_).fetch_or(pi_control::layout::sn.mask()) & pi_control::layout::sn.mask()) != 0;
  }
  bool clear_sn() noexcept {
    return (ref(control_).fetch_and(~pi_control::layout::sn.mask()) & pi_control::layout::sn.mask()) != 0;
  }
  // Return the previous ON.
  bool set_on() noexcept {
    return (ref(control_).fetch_or(pi_control::layout::on.mask()) & pi_control::layout::on.mask()) != 0;
  }
  bool clear_on() noexcept {
    return (ref(control_).fetch_and(~pi_control::layout::on.mask()) & pi_control::layout::on.mask()) != 0;
  }

  // KVM vmx_vcpu_pi_load() after_clear_sn: clear SN, then re-read PIR and set ON if anything
  // is pending, so vectors posted while SN was set (no notification) are not stranded. True
  // when this call set ON: the caller owes the notification (or must process PIR itself).
  // Both steps are seq_cst, so a concurrent post() either sees SN clear and notifies, or
  // its PIR bit is seen here.
  [[nodiscard]] bool clear_sn_and_check() noexcept {
    clear_sn();
    if (pending().empty()) return false;
    return !set_on();
  }

  // Takes every pending vector. Clears ON first, then exchanges each PIR word with 0, as KVM
  // vmx_sync_pir_to_irr() does: a post() landing after a word was taken finds ON clear and
  // notifies, so nothing stays pending without a notification. (PIR first, ON second would
  // lose exactly that notification.)
  vector_set drain() noexcept {
    clear_on();
    return vector_set::from_words(
        {ref(pir_[0]).exchange(0), ref(pir_[1]).exchange(0), ref(pir_[2]).exchange(0), ref(pir_[3]).exchange(0)});
  }

  // Compare-and-swap loop on control, like KVM's pi_try_set_control() loops: f maps the
  // current pi_control to the new one. Returns the value installed.
  template <class F>
  pi_control update_control(F f) noexcept(noexcept(f(pi_control{}))) {
    auto ctl = ref(control_);
    std::uint64_t old = ctl.load();
    for (;;) {
      const pi_control n = f(pi_control::from_raw(old));
      if (ctl.compare_exchange_weak(old, n.raw())) return n;
    }
  }

  // offsetof on the private members, checked below.
  [[nodiscard]] static consteval bool layout_is_exact() noexcept {
    return offsetof(posted_intr_desc, pir_) == pir_offset && offsetof(posted_intr_desc, control_) == control_offset &&
           offsetof(posted_intr_desc, reserved_) == reserved_offset;
  }

 private:
  static std::atomic_ref<std::uint64_t> ref(const std::uint64_t& w) noexcept {
    return std::atomic_ref<std::uint64_t>{const_cast<std::uint64_t&>(w)};
  }

  std::uint64_t pir_[4]{};
  std::uint64_t control_{0};
  std::uint64_t reserved_[3]{};
};

static_assert(sizeof(posted_intr_desc) == posted_intr_desc::size && alignof(posted_intr_desc) == 64);
static_assert(std::is_standard_layout_v<posted_intr_desc> && std::is_trivially_copyable_v<posted_intr_desc>);
static_assert(posted_intr_desc::layout_is_exact());
static_assert(pi_control::layout::nv.lsb / 8 + posted_intr_desc::control_offset == posted_intr_desc::nv_byte_offset);
static_assert(pi_control::layout::ndst.lsb / 8 + posted_intr_desc::control_offset ==
              posted_intr_desc::ndst_byte_offset);
static_assert(std::atomic_ref<std::uint64_t>::is_always_lock_free);

}  // namespace keepalive::hw
