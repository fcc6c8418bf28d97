// Scenario cdev (patched kernel): stage 1 through VFIO's device cdev and
// iommufd. A binds edu to an iommufd context (IOAS, memfd mapping through
// IOMMU_IOAS_MAP_FILE, auto HWPT), starts a DMA with an interrupt, enters
// keepalive and exits: the binding stays, and holds the context. Intruders
// are refused (wrong token, another context, the group). B1 takes the context
// back with the token (VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD), binds to it, takes
// the latched interrupt and dies with a DMA in flight; B reclaims it again:
// same device ID, same HWPT, same domain ID, the mappings taken over with
// IOMMU_IOAS_CHANGE_PROCESS (nothing re-mapped), the DMA data and the
// interrupt there; then LEAVE. Last, an ownerless iommufd-parked device is
// reset by the operator: its binding goes, the group opens again.
// Prints "KA: cdev.<key>=<value>".
#include <fcntl.h>
#include <linux/ioctl.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "guest.hpp"
#include "keepalive/abi/ops.hpp"

namespace ka_guest {
namespace {

namespace abi = keepalive::abi;

struct iommu_ioas_change_process_73 {
  __u32 size;
  __u32 reserved;
};
constexpr unsigned long iommu_ioas_change_process = _IO(';', 0x92);

constexpr std::uint64_t dma_iova = 0x100000;
constexpr std::size_t buffer_bytes = 4096;
constexpr std::uint32_t half = edu::dma_max;
constexpr std::uint32_t marker = 0x4b41cd00;

// What A learnt, for B to compare (a MAP_SHARED page of the parent).
struct owner_facts {
  std::uint32_t ioas_id, hwpt_id, devid, domain_id;
};

int errno_rc(long r) { return r < 0 ? -errno : 0; }

std::uint8_t* map_buffer(int memfd) {
  void* p = mmap(nullptr, buffer_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  return p == MAP_FAILED ? nullptr : static_cast<std::uint8_t*>(p);
}

// ---- A: owns edu through the cdev, dies with a DMA in flight.
int owner_a(const edu_location& loc, int memfd, const keepalive::token& t, owner_facts& facts) {
  std::uint8_t* buf = map_buffer(memfd);
  int iommufd = -1;
  std::uint32_t ioas = 0, devid = 0;
  vfio_edu v;
  if (!buf) return fail("cdev", "a_mmap");
  if (int rc = iommufd_context(memfd, dma_iova, buffer_bytes, iommufd, ioas); rc) return fail("cdev", "a_context", rc);
  if (int rc = v.open_cdev(loc); rc) return fail("cdev", "a_open", rc);
  report("cdev", "a_bind", v.bind_iommufd(iommufd, nullptr, devid));
  std::uint32_t pt = ioas;
  report("cdev", "a_attach", v.attach_pt(pt));
  facts = {ioas, pt, devid, 0};
  report("cdev", "a_ioas", ioas);
  report("cdev", "a_hwpt", pt);
  report("cdev", "a_devid", devid);

  const auto cmd = v.config_read(pci_command, 2);
  if (!cmd || !v.config_write16(pci_command, static_cast<std::uint16_t>(*cmd | pci_command_master)))
    return fail("cdev", "a_bus_master");
  v.bar0_write32(edu::reg_liveness, marker);
  fill_pattern(buf, half, 3);
  std::memset(buf + half, 0xee, half);
  if (!v.start_dma(dma_iova, half, false, false) || !v.wait_dma(2000)) return fail("cdev", "a_dma_to_device");
  const int efd = eventfd(0, EFD_CLOEXEC);
  if (int rc = v.set_msi_trigger(efd); rc) return fail("cdev", "a_msi", rc);
  if (!v.start_dma(dma_iova + half, half, true, true)) return fail("cdev", "a_dma_start");
  report("cdev", "a_enter",
         rc_of(abi::keepalive_enter(abi::linux_syscalls(), v.device(), t, {.allow_masking = true})));
  if (const auto st = abi::keepalive_status(abi::linux_syscalls(), v.device())) {
    report("cdev", "a_state", static_cast<unsigned>(st->state));
    report("cdev", "a_domain_id", st->domain.value());
    facts.domain_id = st->domain.value();
  }
  std::fflush(stdout);
  _exit(0);  // the iommufd fd and the device fd close with the process
}

// ---- B0: no token, a wrong one, its own context, the group.
int intruder_b0(const edu_location& loc, int memfd, const keepalive::token& t, const keepalive::token& wrong) {
  vfio_edu v;
  if (int rc = v.open_cdev(loc); rc) return fail("cdev", "b0_open", rc);
  report("cdev", "b0_get_wrong_token", rc_of(abi::keepalive_get_iommufd(abi::linux_syscalls(), v.device(), wrong)));
  int own = -1;
  std::uint32_t ioas = 0, devid = 0;
  if (int rc = iommufd_context(memfd, dma_iova, buffer_bytes, own, ioas); rc) return fail("cdev", "b0_context", rc);
  report("cdev", "b0_bind_no_token", v.bind_iommufd(own, nullptr, devid));
  // The right token, but not the context the device lives in.
  report("cdev", "b0_bind_other_context", v.bind_iommufd(own, t.raw().data(), devid));
  const int group = open(("/dev/vfio/" + std::to_string(loc.group)).c_str(), O_RDWR | O_CLOEXEC);
  report("cdev", "b0_open_group", group < 0 ? -errno : 0);
  if (group >= 0) close(group);
  return 0;
}

// The reclaim through the cdev: the parked context, bind with the token, the
// same attach. Reports "<who>_*"; returns the context fd or -1.
int reclaim(vfio_edu& v, const edu_location& loc, const keepalive::token& t, const owner_facts& facts,
            const std::string& who) {
  if (int rc = v.open_cdev(loc); rc) return fail("cdev", who + "_open", rc), -1;
  const auto ctx = abi::keepalive_get_iommufd(abi::linux_syscalls(), v.device(), t);
  report("cdev", who + "_get_iommufd", rc_of(ctx));
  if (!ctx) return -1;
  std::uint32_t devid = 0;
  report("cdev", who + "_bind", v.bind_iommufd(*ctx, t.raw().data(), devid));
  report("cdev", who + "_devid_same", devid == facts.devid ? 1 : 0);
  std::uint32_t pt = facts.ioas_id;
  report("cdev", who + "_attach", v.attach_pt(pt));
  report("cdev", who + "_hwpt_same", pt == facts.hwpt_id ? 1 : 0);
  return *ctx;
}

// ---- B1: reclaims, takes the interrupt, starts a DMA and is killed.
int dying_b1(const edu_location& loc, int memfd, const keepalive::token& t, const owner_facts& facts) {
  std::uint8_t* buf = map_buffer(memfd);
  vfio_edu v;
  if (!buf || reclaim(v, loc, t, facts, "b1") < 0) return 1;
  take_irq_and_die_mid_dma("cdev", "b1", v, buf + half, dma_iova + half);
}

// ---- B: the new owner.
int owner_b(const edu_location& loc, int memfd, const keepalive::token& t, const owner_facts& facts) {
  std::uint8_t* buf = map_buffer(memfd);
  vfio_edu v;
  if (!buf) return fail("cdev", "b_mmap");
  const int ctx = reclaim(v, loc, t, facts, "b");
  if (ctx < 0) return 1;
  iommu_ioas_change_process_73 cp{};
  cp.size = sizeof cp;
  report("cdev", "b_change_process", errno_rc(ioctl(ctx, iommu_ioas_change_process, &cp)));
  if (const auto st = abi::keepalive_status(abi::linux_syscalls(), v.device())) {
    report("cdev", "b_state", static_cast<unsigned>(st->state));
    report("cdev", "b_domain_same", st->domain.value() == facts.domain_id && facts.domain_id ? 1 : 0);
    report("cdev", "b_dma_faults", st->dma_faults);
  }
  report("cdev", "b_get_iommufd_owned", rc_of(abi::keepalive_get_iommufd(abi::linux_syscalls(), v.device(), t)));
  report("cdev", "b_marker_kept", v.bar0_read32(edu::reg_liveness) == ~marker ? 1 : 0);
  const auto cmd = v.config_read(pci_command, 2);
  report("cdev", "b_bus_master", cmd && (*cmd & pci_command_master) ? 1 : 0);
  report("cdev", "b_dma_landed", holds_pattern(buf + half, half, 3) ? 1 : 0);

  const int efd = eventfd(0, EFD_CLOEXEC);
  report("cdev", "b_set_msi", v.set_msi_trigger(efd));
  report("cdev", "b_irq_delivered", wait_eventfd(efd, 1000) ? 1 : 0);
  v.bar0_write32(edu::reg_irq_ack, edu::irq_dma);

  // The same mapping, not re-made, carries a new round trip.
  fill_pattern(buf, half, 4);
  std::memset(buf + half, 0, half);
  const bool roundtrip = v.start_dma(dma_iova, half, false, false) && v.wait_dma(2000) &&
                         v.start_dma(dma_iova + half, half, true, true) && v.wait_dma(2000) &&
                         holds_pattern(buf + half, half, 4);
  report("cdev", "b_roundtrip", roundtrip ? 1 : 0);
  report("cdev", "b_roundtrip_irq", wait_eventfd(efd, 1000) ? 1 : 0);
  report("cdev", "b_leave", rc_of(abi::keepalive_leave(abi::linux_syscalls(), v.device(), t)));
  if (const auto st = abi::keepalive_status(abi::linux_syscalls(), v.device()))
    report("cdev", "b_state_after_leave", static_cast<unsigned>(st->state));
  close(ctx);
  return 0;
}

// ---- A2: enters keepalive and exits (no DMA), for the operator's reset.
int owner_a2(const edu_location& loc, int memfd, const keepalive::token& t) {
  int iommufd = -1;
  std::uint32_t ioas = 0, devid = 0;
  vfio_edu v;
  if (int rc = iommufd_context(memfd, dma_iova, buffer_bytes, iommufd, ioas); rc) return fail("cdev", "a2_context", rc);
  if (int rc = v.open_cdev(loc); rc) return fail("cdev", "a2_open", rc);
  if (int rc = v.bind_iommufd(iommufd, nullptr, devid); rc) return fail("cdev", "a2_bind", rc);
  std::uint32_t pt = ioas;
  if (int rc = v.attach_pt(pt); rc) return fail("cdev", "a2_attach", rc);
  report("cdev", "a2_enter",
         rc_of(abi::keepalive_enter(abi::linux_syscalls(), v.device(), t, {.allow_masking = true})));
  return 0;
}

// The operator resets the ownerless device: its parked binding is unbound and
// the device is ordinary again (the group opens, a fresh context binds).
void operator_reset(const edu_location& loc, int memfd, const keepalive::token& t) {
  report("cdev", "r_state", static_cast<unsigned>(wait_listed(false).state));
  if (auto ctl = abi::linux_syscalls().open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR)) {
    report("cdev", "r_reset",
           rc_of(abi::reset_device(abi::linux_syscalls(), *ctl, *keepalive::bdf::parse(loc.bdf))));
    abi::linux_syscalls().close(*ctl);
  }
  {
    vfio_edu v;
    if (v.open_cdev(loc) == 0)
      report("cdev", "r_get_iommufd_after_reset",
             rc_of(abi::keepalive_get_iommufd(abi::linux_syscalls(), v.device(), t)));
  }
  const int group = open(("/dev/vfio/" + std::to_string(loc.group)).c_str(), O_RDWR | O_CLOEXEC);
  report("cdev", "r_open_group", group < 0 ? -errno : 0);
  if (group >= 0) close(group);
  int iommufd = -1;
  std::uint32_t ioas = 0, devid = 0;
  vfio_edu v;
  if (iommufd_context(memfd, dma_iova, buffer_bytes, iommufd, ioas) == 0 && v.open_cdev(loc) == 0)
    report("cdev", "r_bind_fresh", v.bind_iommufd(iommufd, nullptr, devid));
  if (iommufd >= 0) close(iommufd);
}

}  // namespace

int run_cdev() {
  const auto loc = find_edu();
  if (!loc) return fail("cdev", "find_edu");
  const int memfd = memfd_create("ka-cdev", MFD_CLOEXEC);
  if (memfd < 0 || ftruncate(memfd, buffer_bytes) < 0) return fail("cdev", "memfd");
  std::uint8_t* buf = map_buffer(memfd);
  void* shared = mmap(nullptr, sizeof(owner_facts), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (!buf || shared == MAP_FAILED) return fail("cdev", "mmap");
  auto& facts = *new (shared) owner_facts{};
  std::memset(buf, 0, buffer_bytes);
  const keepalive::token token = make_token(0x31);
  const keepalive::token wrong = make_token(0x32);

  {  // A token offered for a device nobody kept alive.
    vfio_edu v;
    int iommufd = -1;
    std::uint32_t ioas = 0, devid = 0;
    if (v.open_cdev(*loc) == 0) {
      report("cdev", "get_iommufd_running",
             rc_of(abi::keepalive_get_iommufd(abi::linux_syscalls(), v.device(), token)));
      if (iommufd_context(memfd, dma_iova, buffer_bytes, iommufd, ioas) == 0) {
        report("cdev", "bind_with_token_running", v.bind_iommufd(iommufd, token.raw().data(), devid));
        // Bound but attached to nothing: no DMA context could stay.
        if (v.bind_iommufd(iommufd, nullptr, devid) == 0)
          report("cdev", "enter_unattached",
                 rc_of(abi::keepalive_enter(abi::linux_syscalls(), v.device(), token, {.allow_masking = true})));
      }
    }
    if (iommufd >= 0) close(iommufd);
  }

  run_child("cdev", "a", [&] { return owner_a(*loc, memfd, token, facts); });
  const auto row = wait_listed(true);
  report("cdev", "p_state", static_cast<unsigned>(row.state));
  report("cdev", "p_nr_pending", row.nr_pending);
  report("cdev", "p_domain_same", row.domain.value() == facts.domain_id && facts.domain_id ? 1 : 0);
  report("cdev", "p_dma_landed", holds_pattern(buf + half, half, 3) ? 1 : 0);
  const auto cmd = sysfs_config_read(loc->bdf, pci_command, 2);
  report("cdev", "p_bus_master", cmd && (*cmd & pci_command_master) ? 1 : 0);

  run_child("cdev", "b0", [&] { return intruder_b0(*loc, memfd, token, wrong); });
  run_child("cdev", "b1", [&] { return dying_b1(*loc, memfd, token, facts); });
  const auto row1 = wait_listed(true);
  report("cdev", "p1_state", static_cast<unsigned>(row1.state));
  report("cdev", "p1_nr_pending", row1.nr_pending);
  report("cdev", "p1_dma_landed", holds_pattern(buf + half, half, 3) ? 1 : 0);
  run_child("cdev", "b", [&] { return owner_b(*loc, memfd, token, facts); });

  run_child("cdev", "a2", [&] { return owner_a2(*loc, memfd, token); });
  operator_reset(*loc, memfd, token);
  report("cdev", "done", 1);
  return 0;
}

}  // namespace ka_guest
