// Scenario stage1 (and its baseline on an unpatched kernel): process A owns edu,
// starts a DMA that raises MSI on completion, enters keepalive and exits before
// the DMA completes; while nobody owns the device the DMA lands and the
// interrupt fires; B0 (no or wrong token) is refused; B reclaims it with the
// token and finds the device as A left it, the DMA data in place and the
// interrupt pending; then B uses the device through the adopted mappings and
// leaves keepalive. Every observation is printed as "KA: stage1.<key>=<value>"
// for test.sh, which decides pass/fail for both kernels.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "guest.hpp"
#include "keepalive/abi/ops.hpp"
#include "vfio_edu.hpp"

namespace ka_guest {
namespace {

namespace abi = keepalive::abi;
using keepalive::errc;

constexpr std::uint64_t dma_iova = 0x100000;  // below edu's 28-bit DMA mask
constexpr std::size_t buffer_bytes = 4096;      // one page: source half, destination half
constexpr std::uint32_t half = edu::dma_max;
constexpr std::uint32_t marker = 0x4b41ed00;    // written to the liveness register


std::uint8_t* map_buffer(int memfd) {
  void* p = mmap(nullptr, buffer_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  return p == MAP_FAILED ? nullptr : static_cast<std::uint8_t*>(p);
}

// ---- A: owns the device, arms keepalive, dies with a DMA in flight.
int owner_a(const edu_location& loc, int memfd, const keepalive::token& t) {
  std::uint8_t* buf = map_buffer(memfd);
  vfio_edu v;
  if (!buf || v.open_group(loc) || v.get_device(loc.bdf)) return fail("stage1", "a_open");
  if (int rc = v.map_dma(dma_iova, buf, buffer_bytes); rc) return fail("stage1", "a_map_dma", rc);
  const auto cmd = v.config_read(pci_command, 2);
  if (!cmd || !v.config_write16(pci_command, static_cast<std::uint16_t>(*cmd | pci_command_master)))
    return fail("stage1", "a_bus_master");
  v.bar0_write32(edu::reg_liveness, marker);
  report("stage1", "a_liveness", hex(v.bar0_read32(edu::reg_liveness).value_or(0)));

  // The device learns the pattern (RAM -> edu), then is asked to write it back.
  fill_pattern(buf, half, 1);
  std::memset(buf + half, 0xee, half);
  if (!v.start_dma(dma_iova, half, false, false) || !v.wait_dma(2000)) return fail("stage1", "a_dma_to_device");

  const int efd = eventfd(0, EFD_CLOEXEC);
  if (int rc = v.set_msi_trigger(efd); rc) return fail("stage1", "a_msi", rc);
  if (!v.start_dma(dma_iova + half, half, true, true)) return fail("stage1", "a_dma_start");
  // No posted interrupts on this host: without ALLOW_MASKING nothing can hold them.
  report("stage1", "a_enter_no_masking", rc_of(abi::keepalive_enter(abi::linux_syscalls(), v.device(), t)));
  const auto enter = abi::keepalive_enter(abi::linux_syscalls(), v.device(), t, {.allow_masking = true});
  report("stage1", "a_enter", rc_of(enter));
  if (enter) {
    report("stage1", "a_irq_mode", static_cast<unsigned>(enter->mode));
    report("stage1", "a_nr_vectors", enter->nr_vectors);
  }
  const auto running = v.bar0_read32(edu::reg_dma_cmd);
  report("stage1", "a_dma_running_at_exit", running && (*running & edu::dma_cmd_run) ? 1 : 0);
  // Exit without closing anything or waiting: a crash, as far as the kernel can tell.
  std::fflush(stdout);
  _exit(0);
}

// ---- B0: an opener without the right token.
int intruder_b0(const edu_location& loc, const keepalive::token& wrong, bool patched) {
  vfio_edu v;
  if (int rc = v.open_group(loc); rc) return fail("stage1", "b0_open_group", rc);
  std::uint8_t scratch[4096] __attribute__((aligned(4096))) = {};
  const int map_rc = v.map_dma(0x200000, scratch, sizeof scratch);
  report("stage1", "b0_map_before_token", map_rc);
  if (map_rc == 0) v.unmap_dma(0x200000, sizeof scratch, 0);
  const int no_token = v.get_device(loc.bdf);
  report("stage1", "b0_open_no_token", no_token);
  if (no_token == 0) return 0;  // baseline: anyone in the group may take it
  const int wrong_token = v.get_device(abi::reclaim_name(*keepalive::bdf::parse(loc.bdf), wrong));
  report("stage1", "b0_open_wrong_token", wrong_token);
  return patched && (no_token != -EACCES || wrong_token != -EACCES) ? 1 : 0;
}

// ---- B1: reclaims, takes the latched interrupt, starts another DMA and is
// killed before leaving keepalive: RECLAIMED -> OWNERLESS, its reconnected
// vector and adopted container are parked again for the next owner.
int dying_b1(const edu_location& loc, int memfd, const keepalive::token& t) {
  std::uint8_t* buf = map_buffer(memfd);
  vfio_edu v;
  if (!buf) return fail("stage1", "b1_mmap");
  if (int rc = v.open_group(loc); rc) return fail("stage1", "b1_open_group", rc);
  const int rc = v.get_device(abi::reclaim_name(*keepalive::bdf::parse(loc.bdf), t));
  report("stage1", "b1_open_with_token", rc);
  if (rc) return 1;
  if (const auto st = abi::keepalive_status(abi::linux_syscalls(), v.device())) {
    report("stage1", "b1_state", static_cast<unsigned>(st->state));
    report("stage1", "b1_nr_pending", st->nr_pending);
  }
  take_irq_and_die_mid_dma("stage1", "b1", v, buf + half, dma_iova + half);
}

// ---- B: the new owner with the token.
int owner_b(const edu_location& loc, int memfd, const keepalive::token& t, bool patched) {
  std::uint8_t* buf = map_buffer(memfd);
  vfio_edu v;
  if (!buf) return fail("stage1", "b_mmap");
  if (int rc = v.open_group(loc); rc) return fail("stage1", "b_open_group", rc);
  int rc = v.get_device(abi::reclaim_name(*keepalive::bdf::parse(loc.bdf), t));
  report("stage1", "b_open_with_token", rc);
  if (rc && !patched) rc = v.get_device(loc.bdf);  // unpatched: vf_token is refused
  if (rc) return fail("stage1", "b_open", rc);

  if (const auto st = abi::keepalive_status(abi::linux_syscalls(), v.device())) {
    report("stage1", "b_state", static_cast<unsigned>(st->state));
    report("stage1", "b_irq_mode", static_cast<unsigned>(st->mode));
    report("stage1", "b_nr_vectors", st->nr_vectors);
    report("stage1", "b_nr_pending", st->nr_pending);
    report("stage1", "b_domain_id", st->domain.value());
    report("stage1", "b_dma_faults", st->dma_faults);
  } else {
    report("stage1", "b_status", rc_of(st));
  }

  // The device as A left it: no reset, still bus master, DMA done, irq latched in edu.
  const auto live = v.bar0_read32(edu::reg_liveness);
  report("stage1", "b_liveness", hex(live.value_or(0)));
  report("stage1", "b_marker_kept", live == ~marker ? 1 : 0);
  const auto cmd = v.config_read(pci_command, 2);
  report("stage1", "b_bus_master", cmd && (*cmd & pci_command_master) ? 1 : 0);
  const auto irq_status = v.bar0_read32(edu::reg_irq_status);
  report("stage1", "b_edu_irq_status", hex(irq_status.value_or(0)));
  report("stage1", "b_dma_landed", holds_pattern(buf + half, half, 1) ? 1 : 0);

  // What a VMM may do before setting vectors up again must not lose the latch:
  // a loopback trigger of the parked vector, an MSI disable.
  if (patched) {
    report("stage1", "b_loopback_parked", v.set_msi_none(0, 1));
    report("stage1", "b_disable_parked", v.set_msi_none(0, 0));
    if (const auto st = abi::keepalive_status(abi::linux_syscalls(), v.device()))
      report("stage1", "b_nr_pending_after_disable", st->nr_pending);
  }

  // The interrupt raised while nobody owned the device reaches B's eventfd.
  const int efd = eventfd(0, EFD_CLOEXEC);
  report("stage1", "b_set_msi", v.set_msi_trigger(efd));
  const auto got = wait_eventfd(efd, 1000);
  report("stage1", "b_irq_delivered", got ? 1 : 0);
  report("stage1", "b_irq_count", got.value_or(0));
  v.bar0_write32(edu::reg_irq_ack, edu::irq_dma);

  // B takes the mappings over (the CPR ioctls) and uses the device through them.
  report("stage1", "b_unmap_vaddr", v.unmap_dma(dma_iova, buffer_bytes, VFIO_DMA_UNMAP_FLAG_VADDR));
  report("stage1", "b_map_vaddr", v.map_dma(dma_iova, buf, buffer_bytes, VFIO_DMA_MAP_FLAG_VADDR));
  if (!patched) {  // the unpatched kernel tore the mappings down: map anew
    if (!(cmd && (*cmd & pci_command_master)))
      v.config_write16(pci_command, static_cast<std::uint16_t>(cmd.value_or(pci_command_memory) | pci_command_master));
    report("stage1", "b_map_fresh", v.map_dma(dma_iova, buf, buffer_bytes));
  }
  fill_pattern(buf, half, 2);
  std::memset(buf + half, 0, half);
  const bool roundtrip = v.start_dma(dma_iova, half, false, false) && v.wait_dma(2000) &&
                         v.start_dma(dma_iova + half, half, true, true) && v.wait_dma(2000) &&
                         holds_pattern(buf + half, half, 2);
  report("stage1", "b_roundtrip", roundtrip ? 1 : 0);
  report("stage1", "b_roundtrip_irq", wait_eventfd(efd, 1000) ? 1 : 0);

  if (patched) {
    keepalive::token::bytes other = t.raw();
    other[15] ^= 1;
    report("stage1", "b_leave_wrong_token",
           rc_of(abi::keepalive_leave(abi::linux_syscalls(), v.device(), keepalive::token{other})));
    report("stage1", "b_leave", rc_of(abi::keepalive_leave(abi::linux_syscalls(), v.device(), t)));
    if (const auto st = abi::keepalive_status(abi::linux_syscalls(), v.device()))
      report("stage1", "b_state_after_leave", static_cast<unsigned>(st->state));
  }
  return 0;
}

// ---- The parent, between A's death and B: the device has no owner.
void observe_ownerless(const edu_location& loc, const std::uint8_t* buf, bool patched, bool fidelity) {
  const auto t0 = std::chrono::steady_clock::now();
  auto ms_since = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  };
  if (patched) {
    auto ctl = abi::linux_syscalls().open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
    if (!ctl) {
      report("stage1", "p_ctl_open", rc_of(ctl));
      return;
    }
    // Wait for the interrupt to be latched (edu completes ~100 ms after the start).
    bool pending = false;
    std::vector<abi::device_entry> rows;
    while (ms_since() < 3000 && !pending) {
      auto l = abi::list_devices(abi::linux_syscalls(), *ctl);
      if (!l) break;
      rows = *l;
      pending = rows.size() == 1 && rows[0].nr_pending > 0;
      if (!pending) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    report("stage1", "p_listed", rows.size());
    if (!rows.empty()) {
      report("stage1", "p_state", static_cast<unsigned>(rows[0].state));
      report("stage1", "p_bdf", rows[0].device.to_string());
      report("stage1", "p_nr_pending", rows[0].nr_pending);
      report("stage1", "p_domain_id", rows[0].domain.value());
    }
    report("stage1", "p_pending_after_ms", ms_since());
    if (const auto info = abi::get_info(abi::linux_syscalls(), *ctl)) {
      report("stage1", "p_caps", hex(info->caps));
      report("stage1", "p_nr_devices", info->nr_devices);
    }
    abi::linux_syscalls().close(*ctl);
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // past the DMA's 100 ms
  }
  report("stage1", "p_dma_landed", holds_pattern(buf + half, half, 1) ? 1 : 0);
  const auto cmd = sysfs_config_read(loc.bdf, pci_command, 2);
  report("stage1", "p_bus_master", cmd && (*cmd & pci_command_master) ? 1 : 0);
  std::uint8_t config[256] = {};
  for (unsigned off = 0; off < sizeof config; off += 4) {
    if (const auto w = sysfs_config_read(loc.bdf, off, 4)) std::memcpy(config + off, &*w, 4);
  }
  const unsigned msi = find_capability(config, sizeof config, pci_cap_id_msi);
  report("stage1", "p_msi_enabled", msi && (config[msi + 2] & 1) ? 1 : 0);
  // PCI_MSI_FLAGS_MASKBIT: edu's MSI cannot mask its vector (the reason for the host latch).
  report("stage1", "p_msi_per_vector_mask", msi && (config[msi + 3] & 1) ? 1 : 0);
  if (fidelity) run_fidelity(loc, buf, dma_iova, buffer_bytes);
}

}  // namespace

int run_stage1(bool patched, bool fidelity) {
  const auto loc = find_edu();
  if (!loc) return fail("stage1", "find_edu");
  report("stage1", "kernel_mode", patched ? "patched" : "baseline");
  const int memfd = memfd_create("ka-dma", MFD_CLOEXEC);
  if (memfd < 0 || ftruncate(memfd, buffer_bytes) < 0) return fail("stage1", "memfd");
  std::uint8_t* buf = map_buffer(memfd);
  if (!buf) return fail("stage1", "mmap");
  std::memset(buf, 0, buffer_bytes);

  const keepalive::token token = make_token(0x11);
  const keepalive::token wrong = make_token(0x12);
  report("stage1", "token", token.to_string());

  run_child("stage1", "a", [&] { return owner_a(*loc, memfd, token); });
  observe_ownerless(*loc, buf, patched, fidelity);
  run_child("stage1", "b0", [&] { return intruder_b0(*loc, wrong, patched); });
  if (patched) {
    run_child("stage1", "b1", [&] { return dying_b1(*loc, memfd, token); });
    // B1's DMA completes ~100 ms after its death: latched again.
    const auto row = wait_listed(true);
    report("stage1", "p1_state", static_cast<unsigned>(row.state));
    report("stage1", "p1_nr_pending", row.nr_pending);
    report("stage1", "p1_dma_landed", holds_pattern(buf + half, half, 1) ? 1 : 0);
  }
  run_child("stage1", "b", [&] { return owner_b(*loc, memfd, token, patched); });

  if (patched) {
    if (auto ctl = abi::linux_syscalls().open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR)) {
      if (auto l = abi::list_devices(abi::linux_syscalls(), *ctl)) report("stage1", "p_listed_after", l->size());
      abi::linux_syscalls().close(*ctl);
    }
  }
  report("stage1", "done", 1);
  return 0;
}

}  // namespace ka_guest
