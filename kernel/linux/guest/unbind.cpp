// Scenario unbind (patched kernel): the driver is unbound from an ownerless
// kept-alive device (device removal, driver change). The kernel must release
// it like RESET_DEVICE does (quiesced, parked container detached, EVENT_RESET)
// without hanging, and the device must bind again and open as an ordinary one.
// Prints "KA: unbind.<key>=<value>".
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>

#include "guest.hpp"
#include "keepalive/abi/ops.hpp"

namespace ka_guest {
namespace {

namespace abi = keepalive::abi;

int owner_a4(const edu_location& loc) {
  void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  vfio_edu v;
  if (page == MAP_FAILED || v.open_group(loc) || v.get_device(loc.bdf)) return fail("unbind", "a4_open");
  if (int rc = v.map_dma(0x100000, page, 4096); rc) return fail("unbind", "a4_map", rc);
  const auto cmd = v.config_read(pci_command, 2);
  if (!cmd || !v.config_write16(pci_command, static_cast<std::uint16_t>(*cmd | pci_command_master)))
    return fail("unbind", "a4_bus_master");
  const int efd = eventfd(0, EFD_CLOEXEC);
  if (int rc = v.set_msi_trigger(efd); rc) return fail("unbind", "a4_msi", rc);
  report("unbind", "a4_enter",
         rc_of(abi::keepalive_enter(abi::linux_syscalls(), v.device(), make_token(0x30), {.allow_masking = true})));
  std::fflush(stdout);
  _exit(0);
}

int opener_c2(const edu_location& loc) {
  vfio_edu v;
  if (int rc = v.open_group(loc); rc) return fail("unbind", "c2_open_group", rc);
  report("unbind", "c2_open_plain", v.get_device(loc.bdf));
  if (const auto st = abi::keepalive_status(abi::linux_syscalls(), v.device()))
    report("unbind", "c2_state", static_cast<unsigned>(st->state));
  return 0;
}

bool exists(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0;
}

}  // namespace

int run_unbind() {
  const auto loc = find_edu();
  if (!loc) return fail("unbind", "find_edu");
  auto& sys = abi::linux_syscalls();
  auto ctl = sys.open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  if (!ctl) return fail("unbind", "ctl_open", rc_of(ctl));
  while (abi::read_event(sys, *ctl)) {
  }
  const std::string group_node = "/dev/vfio/" + std::to_string(loc->group);

  run_child("unbind", "a4", [&] { return owner_a4(*loc); });
  if (auto rows = abi::list_devices(sys, *ctl); rows && rows->size() == 1)
    report("unbind", "state_before", static_cast<unsigned>((*rows)[0].state));

  const auto t0 = std::chrono::steady_clock::now();
  report("unbind", "unbind_written", write_sysfs("/sys/bus/pci/drivers/vfio-pci/unbind", loc->bdf) ? 1 : 0);
  report("unbind", "unbind_ms",
         std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
  if (auto rows = abi::list_devices(sys, *ctl)) report("unbind", "listed_after", rows->size());
  bool reset_event = false;
  while (auto e = abi::read_event(sys, *ctl))
    reset_event = reset_event || e->type == VFIO_KEEPALIVE_EVENT_RESET;
  report("unbind", "event_reset", reset_event ? 1 : 0);
  const auto cmd = sysfs_config_read(loc->bdf, pci_command, 2);
  report("unbind", "bus_master_after", cmd && (*cmd & pci_command_master) ? 1 : 0);
  report("unbind", "group_node_after", exists(group_node) ? 1 : 0);

  // driver_override is still vfio-pci: probing binds it again.
  write_sysfs("/sys/bus/pci/drivers_probe", loc->bdf);
  report("unbind", "rebound", exists("/sys/bus/pci/drivers/vfio-pci/" + loc->bdf) ? 1 : 0);
  run_child("unbind", "c2", [&] { return opener_c2(*loc); });
  sys.close(*ctl);
  report("unbind", "done", 1);
  return 0;
}

}  // namespace ka_guest
