// Scenario unowned_fault (patched kernel): what happens to a kept-alive device
// that misbehaves while nobody owns it, and the operator's way out.
// A3 arms keepalive (RESET_DEVICE on it is refused: owned), then dies with a
// DMA in flight to an IOVA it never mapped: the IOMMU faults while the device
// is ownerless, the control node queues EVENT_DMA_FAULT naming the device and
// the page. RESET_DEVICE then quiesces it (bus mastering off, EVENT_RESET) and
// releases its parked container; C opens it without a token as an ordinary
// device, its keepalive token is no longer accepted (ENOENT), and GET_STATUS
// counts the fault. Prints "KA: fault.<key>=<value>".
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "guest.hpp"
#include "keepalive/abi/ops.hpp"

namespace ka_guest {
namespace {

namespace abi = keepalive::abi;

constexpr std::uint64_t mapped_iova = 0x100000;
constexpr std::uint64_t unmapped_iova = 0x300000;
const keepalive::token a3_token = make_token(0xa0);

int owner_a3(const edu_location& loc) {
  auto& sys = abi::linux_syscalls();
  void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  vfio_edu v;
  if (page == MAP_FAILED || v.open_group(loc) || v.get_device(loc.bdf)) return fail("fault", "a3_open");
  if (int rc = v.map_dma(mapped_iova, page, 4096); rc) return fail("fault", "a3_map", rc);
  const auto cmd = v.config_read(pci_command, 2);
  if (!cmd || !v.config_write16(pci_command, static_cast<std::uint16_t>(*cmd | pci_command_master)))
    return fail("fault", "a3_bus_master");
  const int efd = eventfd(0, EFD_CLOEXEC);
  if (int rc = v.set_msi_trigger(efd); rc) return fail("fault", "a3_msi", rc);
  const auto enter = abi::keepalive_enter(sys, v.device(), a3_token, {.allow_masking = true});
  report("fault", "a3_enter", rc_of(enter));
  if (auto ctl = sys.open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR)) {
    const auto r = abi::reset_device(sys, *ctl, *keepalive::bdf::parse(loc.bdf));
    report("fault", "reset_while_owned", rc_of(r));
    sys.close(*ctl);
  }
  if (!v.start_dma(unmapped_iova, 64, true, true)) return fail("fault", "a3_dma");
  std::fflush(stdout);
  _exit(0);
}

int opener_c(const edu_location& loc) {
  vfio_edu v;
  if (int rc = v.open_group(loc); rc) return fail("fault", "c_open_group", rc);
  report("fault", "c_open_with_old_token", v.get_device(abi::reclaim_name(*keepalive::bdf::parse(loc.bdf), a3_token)));
  report("fault", "c_open_plain", v.get_device(loc.bdf));
  if (const auto st = abi::keepalive_status(abi::linux_syscalls(), v.device())) {
    report("fault", "c_state", static_cast<unsigned>(st->state));
    report("fault", "c_dma_faults", st->dma_faults);
  }
  return 0;
}

}  // namespace

int run_unowned_fault() {
  const auto loc = find_edu();
  if (!loc) return fail("fault", "find_edu");
  auto& sys = abi::linux_syscalls();
  auto ctl = sys.open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  if (!ctl) return fail("fault", "ctl_open", rc_of(ctl));
  while (abi::read_event(sys, *ctl)) {  // start from an empty queue
  }
  const auto device = *keepalive::bdf::parse(loc->bdf);

  run_child("fault", "a3", [&] { return owner_a3(*loc); });

  // The fault arrives ~100 ms after A3's exit, while the device is ownerless.
  std::optional<abi::event> fault;
  const auto t0 = std::chrono::steady_clock::now();
  while (!fault && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3)) {
    if (auto e = abi::read_event(sys, *ctl)) {
      if (e->type == VFIO_KEEPALIVE_EVENT_DMA_FAULT) fault = *e;
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  report("fault", "event_dma_fault", fault ? 1 : 0);
  if (fault) {
    report("fault", "event_bdf", fault->device.to_string());
    report("fault", "event_addr", hex(fault->data));
    report("fault", "event_seq", fault->seq);
  }
  if (auto rows = abi::list_devices(sys, *ctl); rows && rows->size() == 1)
    report("fault", "state_before_reset", static_cast<unsigned>((*rows)[0].state));

  const auto reset = abi::reset_device(sys, *ctl, device);
  report("fault", "reset", rc_of(reset));
  const auto again = abi::reset_device(sys, *ctl, device);
  report("fault", "reset_again", rc_of(again));
  if (auto rows = abi::list_devices(sys, *ctl)) report("fault", "listed_after_reset", rows->size());
  std::optional<abi::event> reset_event;
  while (auto e = abi::read_event(sys, *ctl))
    if (e->type == VFIO_KEEPALIVE_EVENT_RESET && e->device == device) reset_event = *e;
  report("fault", "event_reset", reset_event ? 1 : 0);
  if (reset_event && fault) report("fault", "event_seq_increases", reset_event->seq > fault->seq ? 1 : 0);
  const auto cmd = sysfs_config_read(loc->bdf, pci_command, 2);
  report("fault", "bus_master_after_reset", cmd && (*cmd & pci_command_master) ? 1 : 0);

  run_child("fault", "c", [&] { return opener_c(*loc); });
  sys.close(*ctl);
  report("fault", "done", 1);
  return 0;
}

}  // namespace ka_guest
