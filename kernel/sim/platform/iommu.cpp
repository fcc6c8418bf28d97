#include "iommu.hpp"

#include <algorithm>
#include <cstring>

#include <keepalive/hw/irte.hpp>
#include <keepalive/hw/msi.hpp>
#include <keepalive/hw/page_table.hpp>
#include <keepalive/hw/posted_intr.hpp>
#include <keepalive/hw/root_context.hpp>

namespace keepalive::sim {

const char* to_string(dma_fault_reason r) noexcept {
  switch (r) {
    case dma_fault_reason::translation_disabled: return "translation disabled";
    case dma_fault_reason::root_not_present: return "root entry not present";
    case dma_fault_reason::context_not_present: return "context entry not present";
    case dma_fault_reason::context_invalid: return "context entry invalid";
    case dma_fault_reason::pte_not_present: return "page-table entry not present";
    case dma_fault_reason::write_not_allowed: return "write not allowed";
    case dma_fault_reason::read_not_allowed: return "read not allowed";
    case dma_fault_reason::address_beyond_width: return "address beyond the domain's width";
    case dma_fault_reason::outside_memory: return "translated address outside physical memory";
  }
  return "unknown DMA fault";
}

const char* to_string(ir_fault_reason r) noexcept {
  switch (r) {
    case ir_fault_reason::remapping_disabled: return "interrupt remapping disabled";
    case ir_fault_reason::compatibility_format: return "compatibility-format interrupt blocked";
    case ir_fault_reason::index_out_of_table: return "IRTE index beyond the table";
    case ir_fault_reason::not_present: return "IRTE not present";
    case ir_fault_reason::reserved_bits: return "IRTE reserved bits set";
    case ir_fault_reason::source_id_mismatch: return "source ID does not match the IRTE";
    case ir_fault_reason::descriptor_outside_memory: return "IRTE or posted-interrupt descriptor outside memory";
  }
  return "unknown interrupt-remapping fault";
}

void iommu::set_cpu_sink(cpu_sink sink) {
  auto p = sink ? std::make_shared<const cpu_sink>(std::move(sink)) : nullptr;
  std::lock_guard lk{mu_};
  sink_ = std::move(p);
}

iommu_counters iommu::counters() const {
  iommu_counters c;
  c.dma_ok = ctr_.dma_ok.load();
  c.dma_faults = ctr_.dma_faults.load();
  c.irq_remapped = ctr_.irq_remapped.load();
  c.irq_posted = ctr_.irq_posted.load();
  c.irq_notifications = ctr_.irq_notifications.load();
  c.ir_faults = ctr_.ir_faults.load();
  c.irq_no_cpu = ctr_.irq_no_cpu.load();
  return c;
}

std::uint64_t iommu::dma_faults_for(std::uint16_t source_id) const {
  std::lock_guard lk{mu_};
  for (const auto& [sid, n] : faults_by_sid_)
    if (sid == source_id) return n;
  return 0;
}

namespace {
template <class T>
std::vector<T> ring_in_order(const std::vector<T>& ring, std::size_t next) {
  std::vector<T> out;
  if (next == 0) return ring;  // not wrapped yet, or wrapped exactly
  out.reserve(ring.size());
  out.insert(out.end(), ring.begin() + static_cast<std::ptrdiff_t>(next), ring.end());
  out.insert(out.end(), ring.begin(), ring.begin() + static_cast<std::ptrdiff_t>(next));
  return out;
}
template <class T>
void ring_push(std::vector<T>& ring, std::size_t& next, std::size_t cap, const T& v) {
  if (ring.size() < cap) {
    ring.push_back(v);
    return;
  }
  ring[next] = v;
  next = (next + 1) % cap;
}
}  // namespace

std::vector<dma_fault> iommu::recent_dma_faults() const {
  std::lock_guard lk{mu_};
  return ring_in_order(dma_log_, dma_next_);
}

std::vector<ir_fault> iommu::recent_ir_faults() const {
  std::lock_guard lk{mu_};
  return ring_in_order(ir_log_, ir_next_);
}

void iommu::record(const dma_fault& f) {
  ctr_.dma_faults.fetch_add(1);
  std::lock_guard lk{mu_};
  ring_push(dma_log_, dma_next_, fault_log_size, f);
  auto it =
      std::find_if(faults_by_sid_.begin(), faults_by_sid_.end(), [&](const auto& e) { return e.first == f.source_id; });
  if (it == faults_by_sid_.end())
    faults_by_sid_.emplace_back(f.source_id, 1);
  else
    ++it->second;
}

void iommu::record(const ir_fault& f) {
  ctr_.ir_faults.fetch_add(1);
  std::lock_guard lk{mu_};
  ring_push(ir_log_, ir_next_, fault_log_size, f);
}

// ---- DMA remapping ----------------------------------------------------------------

namespace {

// Device data into physical memory. Aligned words are release stores, so a reader that
// acquires a word written later (a descriptor's DD) sees everything written before it.
void copy_to_phys(const phys_memory& mem, hpa at, std::span<const std::byte> src) {
  std::byte* dst = mem.base() + at.value();
  std::size_t i = 0;
  while (i < src.size() && (at.value() + i) % 8 != 0) {
    dst[i] = src[i];
    ++i;
  }
  for (; i + 8 <= src.size(); i += 8) {
    std::uint64_t w = 0;
    std::memcpy(&w, src.data() + i, 8);
    std::atomic_ref<std::uint64_t>{*reinterpret_cast<std::uint64_t*>(dst + i)}.store(w, std::memory_order_release);
  }
  for (; i < src.size(); ++i) dst[i] = src[i];
}

void copy_from_phys(const phys_memory& mem, hpa at, std::span<std::byte> out) {
  const std::byte* src = mem.base() + at.value();
  std::size_t i = 0;
  while (i < out.size() && (at.value() + i) % 8 != 0) {
    out[i] = src[i];
    ++i;
  }
  for (; i + 8 <= out.size(); i += 8) {
    const std::uint64_t w =
        std::atomic_ref<std::uint64_t>{*reinterpret_cast<std::uint64_t*>(const_cast<std::byte*>(src + i))}.load(
            std::memory_order_acquire);
    std::memcpy(out.data() + i, &w, 8);
  }
  for (; i < out.size(); ++i) out[i] = src[i];
}

// What the IOMMU's table reads see: physical memory, and 0 (not present) for a pointer that
// leads outside it, remembered so the fault says where the walk went.
class bounded_memory {
 public:
  explicit bounded_memory(const phys_memory& mem) noexcept : mem_{mem} {}
  [[nodiscard]] std::uint64_t load64(hpa a) const noexcept {
    if (a.value() % 8 != 0 || !mem_.contains(a, 8)) {
      outside_ = true;
      return 0;
    }
    return mem_.load64(a);
  }
  [[nodiscard]] bool went_outside() const noexcept { return outside_; }

 private:
  const phys_memory& mem_;
  mutable bool outside_ = false;
};
static_assert(hw::readable_phys_memory<bounded_memory>);

dma_fault_reason reason_for(hw::context_fault f) noexcept {
  switch (f) {
    case hw::context_fault::root_not_present: return dma_fault_reason::root_not_present;
    case hw::context_fault::context_not_present: return dma_fault_reason::context_not_present;
    case hw::context_fault::root_reserved_bits:
    case hw::context_fault::context_reserved_bits:
    case hw::context_fault::context_invalid: return dma_fault_reason::context_invalid;
  }
  return dma_fault_reason::context_invalid;
}

dma_fault_reason reason_for(hw::fault_reason f) noexcept {
  switch (f) {
    case hw::fault_reason::not_present: return dma_fault_reason::pte_not_present;
    case hw::fault_reason::read_not_allowed: return dma_fault_reason::read_not_allowed;
    case hw::fault_reason::write_to_readonly: return dma_fault_reason::write_not_allowed;
    case hw::fault_reason::address_beyond_width: return dma_fault_reason::address_beyond_width;
    case hw::fault_reason::reserved_bits_set: return dma_fault_reason::pte_not_present;  // no closer reason
    case hw::fault_reason::unsupported_levels: return dma_fault_reason::context_invalid;
  }
  return dma_fault_reason::pte_not_present;
}

// Address widths this unit supports (SAGAW): 39, 48 and 57 bits; not the 30-bit AW 0.
constexpr std::uint8_t min_supported_aw = 1;

}  // namespace

// Walks root -> context -> second level for every page of [addr, addr + len) before any byte
// moves: a transfer either completes whole or faults without touching memory.
bool iommu::translate_range(std::uint16_t source_id, iova addr, std::uint64_t len, bool write,
                            std::vector<chunk>& out) {
  auto fault = [&](iova at, dma_fault_reason r) {
    record(dma_fault{source_id, at, write, r});
    return false;
  };
  const std::uint64_t rtaddr = rtaddr_.load(std::memory_order_acquire);
  if (rtaddr == 0 || (rtaddr & hw::rtaddr_scalable_mode) != 0)  // scalable mode is not implemented
    return fault(addr, dma_fault_reason::translation_disabled);
  if (len == 0) return true;
  if (addr.value() + len < addr.value()) return fault(addr, dma_fault_reason::address_beyond_width);

  const bounded_memory tables{mem_};
  const auto ctx = hw::resolve_context(tables, hpa{rtaddr & ~(hw::page_bytes - 1)}, bdf::from_packed(source_id));
  if (tables.went_outside()) return fault(addr, dma_fault_reason::outside_memory);
  if (!ctx) return fault(addr, reason_for(ctx.fault()));
  const hw::context_entry& ce = ctx->entry;
  const auto tt = ce.translation_type();
  if (tt == hw::translation_type::dev_iotlb) return fault(addr, dma_fault_reason::context_invalid);  // no ECAP.DT
  if (tt == hw::translation_type::multi_level && ce.address_width() < min_supported_aw)
    return fault(addr, dma_fault_reason::context_invalid);

  const auto access = write ? hw::dma_access::write : hw::dma_access::read;
  out.clear();
  for (std::uint64_t done = 0; done < len;) {
    const iova va = addr + done;
    hpa pa{va.value()};
    std::uint64_t page = hw::page_bytes;
    if (tt == hw::translation_type::multi_level) {
      const auto t = hw::translate(tables, ce.slptptr(), ce.levels(), va, access);
      if (tables.went_outside()) return fault(va, dma_fault_reason::outside_memory);
      if (!t) return fault(va, reason_for(t.fault().reason));
      pa = t->address;
      page = t->page_size;
    }
    const std::uint64_t n = std::min(len - done, page - (va.value() & (page - 1)));
    if (!mem_.contains(pa, n)) return fault(va, dma_fault_reason::outside_memory);
    out.push_back(chunk{pa, n});
    done += n;
  }
  return true;
}

bool iommu::dma_write(std::uint16_t source_id, iova addr, std::span<const std::byte> data) {
  thread_local std::vector<chunk> chunks;  // device threads DMA per packet: no allocation each time
  if (!translate_range(source_id, addr, data.size(), true, chunks)) return false;
  std::size_t off = 0;
  for (const auto& c : chunks) {
    copy_to_phys(mem_, c.at, data.subspan(off, static_cast<std::size_t>(c.len)));
    off += static_cast<std::size_t>(c.len);
  }
  ctr_.dma_ok.fetch_add(1);
  return true;
}

bool iommu::dma_read(std::uint16_t source_id, iova addr, std::span<std::byte> out) {
  thread_local std::vector<chunk> chunks;
  if (!translate_range(source_id, addr, out.size(), false, chunks)) return false;
  std::size_t off = 0;
  for (const auto& c : chunks) {
    copy_from_phys(mem_, c.at, out.subspan(off, static_cast<std::size_t>(c.len)));
    off += static_cast<std::size_t>(c.len);
  }
  ctr_.dma_ok.fetch_add(1);
  return true;
}

// ---- Interrupt remapping ----------------------------------------------------------

void iommu::deliver(apic_id dest, vector v) {
  std::shared_ptr<const cpu_sink> sink;
  {
    std::lock_guard lk{mu_};
    sink = sink_;
  }
  if (!sink || !(*sink)(dest, v)) ctr_.irq_no_cpu.fetch_add(1);
}

namespace {

// VT-d 9.10 SVT/SQ: does the requester match the IRTE's source fields?
bool source_matches(const hw::irte& e, std::uint16_t requester) {
  switch (e.svt()) {
    case hw::source_validation::none: return true;
    case hw::source_validation::sid_sq: {
      // SQ 1..3 ignore function bits 2, 2:1, 2:0.
      static constexpr std::uint16_t ignore[] = {0x0, 0x4, 0x6, 0x7};
      const std::uint16_t mask = static_cast<std::uint16_t>(~ignore[static_cast<unsigned>(e.sq())]);
      return (e.sid() & mask) == (requester & mask);
    }
    case hw::source_validation::bus: {
      const unsigned bus = requester >> 8, start = e.sid() >> 8, end = e.sid() & 0xffu;
      return bus >= start && bus <= end;
    }
    case hw::source_validation::reserved: return false;
  }
  return false;
}

}  // namespace

void iommu::msi(std::uint16_t source_id, std::uint64_t address, std::uint32_t data) {
  const hw::msi_message m{static_cast<std::uint32_t>(address), static_cast<std::uint32_t>(address >> 32), data};
  const auto format = hw::classify(m);
  if (format == hw::msi_format::not_an_interrupt) {
    // Not the interrupt window: an ordinary memory write, remapped like any DMA.
    std::array<std::byte, 4> raw;
    std::memcpy(raw.data(), &data, sizeof data);
    dma_write(source_id, iova{address}, raw);
    return;
  }
  const auto remappable = hw::decode_remappable(m);
  const std::uint32_t index = remappable ? remappable->effective_index() : 0;
  const auto irta = hw::irta_reg::from_raw(irta_.load(std::memory_order_acquire));
  if (irta.raw() == 0) return record(ir_fault{source_id, index, ir_fault_reason::remapping_disabled});
  if (!remappable) return record(ir_fault{source_id, index, ir_fault_reason::compatibility_format});
  if (index >= irta.entries()) return record(ir_fault{source_id, index, ir_fault_reason::index_out_of_table});
  const hpa slot = irta.base() + std::uint64_t{index} * hw::irte_bytes;
  if (!mem_.contains(slot, hw::irte_bytes))
    return record(ir_fault{source_id, index, ir_fault_reason::descriptor_outside_memory});

  std::shared_lock in_flight{remapping_};
  const hw::irte e = hw::irte_load(mem_.word_ptr(slot));
  if (!e.present()) return record(ir_fault{source_id, index, ir_fault_reason::not_present});
  const hw::apic_mode mode = irta.mode();
  if (e.reserved_bits_set(mode) || (e.is_posted() && !posted_interrupts()) ||
      e.svt() == hw::source_validation::reserved)
    return record(ir_fault{source_id, index, ir_fault_reason::reserved_bits});
  if (!source_matches(e, source_id)) return record(ir_fault{source_id, index, ir_fault_reason::source_id_mismatch});

  if (!e.is_posted()) {
    ctr_.irq_remapped.fetch_add(1);
    in_flight.unlock();
    deliver(e.destination(mode), e.vector());
    return;
  }
  const hpa pda = e.pda();
  if (!mem_.contains(pda, hw::posted_intr_desc::size) || pda.value() % hw::posted_intr_desc::size != 0)
    return record(ir_fault{source_id, index, ir_fault_reason::descriptor_outside_memory});
  auto* pid = reinterpret_cast<hw::posted_intr_desc*>(mem_.base() + pda.value());
  const hw::post_result r = pid->post(e.vector(), e.urgent());
  in_flight.unlock();
  ctr_.irq_posted.fetch_add(1);
  if (r.notify) {
    ctr_.irq_notifications.fetch_add(1);
    deliver(r.control.destination(mode), r.control.nv());
  }
}

void iommu::invalidate_interrupt_entries() { std::unique_lock drain{remapping_}; }

}  // namespace keepalive::sim
