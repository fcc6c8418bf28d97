// Internals of the sim kernel (not installed; see kernel.hpp for the API).
#pragma once

#include <linux/vfio.h>
#include <linux/vfio_keepalive.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "keepalive/abi/dispatch.hpp"
#include "keepalive/fsm/device.hpp"
#include "keepalive/fsm/domain.hpp"
#include "keepalive/fsm/vector.hpp"
#include "keepalive/hw/irte.hpp"
#include "keepalive/hw/posted_intr.hpp"
#include "keepalive/types.hpp"
#include "kernel.hpp"
#include "sim_uapi.h"
#include "sim_uapi_traits.hpp"

namespace keepalive::sim {

inline constexpr vector posted_notification_vector{0xF2};  // Linux POSTED_INTR_VECTOR
inline constexpr std::uint8_t first_host_vector = 0x30, last_host_vector = 0xDF;
inline constexpr unsigned default_levels = 4;  // 48-bit second-level tables

// An eventfd the kernel holds a reference to (dup of the caller's fd).
class eventfd_ref {
 public:
  explicit eventfd_ref(int fd) : fd_{fd} {}
  ~eventfd_ref();
  eventfd_ref(const eventfd_ref&) = delete;
  eventfd_ref& operator=(const eventfd_ref&) = delete;
  void signal() const;
  [[nodiscard]] int fd() const noexcept { return fd_; }

 private:
  int fd_;
};

// A posted-interrupt descriptor in kernel memory: a vCPU's (KVM side), or a
// keepalive parking descriptor that holds remapped vectors while unowned.
struct pid_obj {
  std::uint32_t id = 0;
  hpa addr;
  apic_id ndst;
  bool parking = false;                                   // PIR bit = MSI-X index
  std::map<std::uint8_t, std::shared_ptr<eventfd_ref>> irqfds;  // guest vector -> irqfd
  int vm = -1;                                            // owning VM file id, -1 once orphaned
  bool preserved = false;  // held by keepalive: SN set, never drained by notification
};

struct vector_slot {
  fsm::vector_state state = fsm::vector_state::free;
  irte_index irte{};
  apic_id host_cpu{};                      // remapped delivery: this host CPU ...
  vector host_vector{};                    // ... at this vector
  std::shared_ptr<eventfd_ref> trigger;    // VFIO_DEVICE_SET_IRQS eventfd
  std::shared_ptr<pid_obj> pid;            // posted: current descriptor; preserved: where it accumulates
  vector pir_bit{};                        // the bit of `pid` this vector posts (guest vector, or index when parked)
  std::shared_ptr<eventfd_ref> irqfd;      // posted: guest delivery
  bool masked_for_keepalive = false;       // masking fallback: the PBA holds it
  bool latched = false;                    // a message arrived during preserve without a descriptor
};

struct domain_obj {
  fsm::domain_state state = fsm::domain_state::none;
  domain_id did;
  unsigned levels = default_levels;
  hpa root;
  std::vector<hpa> pages;  // every table page (root included)
  struct mapping {
    std::uint64_t size;
    hpa target;
    std::uint32_t flags;
  };
  std::map<std::uint64_t, mapping> maps;  // type1 bookkeeping by IOVA
  unsigned attached = 0;                  // devices whose context entry points here
};

struct file;
struct vdev {
  pci_function* fn = nullptr;
  bdf address;
  fsm::device_state state = fsm::device_state::running;
  token owner_token;
  std::uint32_t irq_mode = VFIO_KEEPALIVE_IRQ_NONE;
  std::shared_ptr<domain_obj> domain;
  std::vector<vector_slot> vectors;
  std::shared_ptr<pid_obj> parking;
  file* owner = nullptr;  // the device file while owned
  std::uint64_t bar0 = 0;
  bool in_handover = false;
};

enum class file_kind { container, group, device, control, vm };
struct file {
  explicit file(file_kind k) : kind{k} {}
  file_kind kind;
  int id = 0;
  // container
  bool type1 = false;
  std::shared_ptr<domain_obj> domain;
  // group
  unsigned group = 0;
  std::shared_ptr<file> container;
  // device
  vdev* dev = nullptr;
  // vm
  std::vector<std::shared_ptr<pid_obj>> pids;
};

struct event_rec {
  std::uint64_t seq;
  std::uint32_t type;
  bdf device;
  std::uint32_t err;
  std::uint64_t data;
};

// Interrupt entry: the platform's CPUs call through this gate; the kernel
// closes it when it shuts down (before taking its own lock), waiting for calls
// in flight, so a device thread never calls into a dead kernel.
class irq_gate {
 public:
  explicit irq_gate(class kernel_core* core) : core_{core} {}
  bool call(apic_id cpu, vector v);
  void close();

 private:
  std::atomic<class kernel_core*> core_;
  std::atomic<int> inflight_{0};
};

// Serve a keepalive-style ioctl (size first) from a dispatch table.
template <typename Ctx>
long dispatch_user(std::span<const abi::ioctl_op<Ctx>> ops, Ctx& ctx, unsigned long cmd, void* arg) {
  for (const auto& op : ops) {
    if (op.cmd != cmd) continue;
    if (arg == nullptr) return -EFAULT;
    std::uint32_t size = 0;
    std::memcpy(&size, arg, sizeof size);
    std::span<std::byte> user{static_cast<std::byte*>(arg), std::max<std::size_t>(size, sizeof size)};
    return -static_cast<long>(op.call(ctx, user));
  }
  return -ENOTTY;
}

class kernel_core;
struct dev_ctx {
  kernel_core& k;
  vdev& d;
};
struct vm_ctx {
  kernel_core& k;
  file& vm;
  int pid;
};
struct ctl_ctx {
  kernel_core& k;
};

class kernel_core {
 public:
  kernel_core(platform& plat, const kernel_config& cfg);
  ~kernel_core();

  status boot();
  void shutdown();  // the kexec shutdown path

  // process side
  int new_process() { return ++last_pid_; }
  long ioctl(int pid, int fd, unsigned long cmd, void* arg);
  result<int> open(int pid, std::string_view path);
  errc close(int pid, int fd);
  result<std::size_t> rw(int pid, int fd, std::span<std::byte> buf, std::uint64_t offset, bool write);
  void exit_process(int pid);

  // GET_IOMMUFD: only the state decides (static: tests reach states no device fd is open in).
  static errc ka_get_iommufd(const vdev& d, vfio_keepalive_iommufd& r);

  bool on_interrupt(apic_id cpu, vector v);
  kernel_stats stats() const;
  std::string describe() const;

 private:
  friend class kernel;
  using fd_table = std::map<int, std::shared_ptr<file>>;

  // boot
  status adopt_handover(std::span<const std::byte> image, std::vector<bdf>& restored);
  void refuse_handover(std::span<const std::byte> image, const error& why);
  void enumerate(const std::vector<bdf>& restored);
  status init_tables();

  // vt-d
  hpa context_slot(bdf b, bool create);
  void attach(vdev& d, domain_obj& dom);
  void detach(vdev& d);
  std::shared_ptr<domain_obj> new_domain();
  void free_domain(domain_obj& dom);
  std::optional<irte_index> alloc_irte();
  void free_irte(irte_index i);
  std::uint64_t* irte_slot(irte_index i) const;
  // Atomic (cmpxchg16b) store, then the interrupt entry cache flush: as
  // Linux's modify_irte(), no interrupt uses the old entry after it returns.
  void set_irte(irte_index i, const hw::irte& e);
  void write_irte_remapped(vdev& d, vector_slot& s);
  void write_irte_posted(vdev& d, vector_slot& s);
  // A (host CPU, vector) for slot `index` of `d`, reusing the one it has.
  bool alloc_host_vector(vdev& d, unsigned index);
  static std::uint32_t host_key(apic_id cpu, vector v) { return cpu.value() << 8 | v.value(); }
  std::shared_ptr<pid_obj> new_pid(apic_id ndst, bool sn);
  hw::posted_intr_desc& desc(const pid_obj& p) const;
  bool take_pir_bit(const pid_obj& p, vector v);
  void deliver_posted(pid_obj& p);

  // devices
  vdev* find_dev(bdf b);
  std::uint32_t cfg_read(vdev& d, std::uint16_t off, unsigned size);
  void cfg_write(vdev& d, std::uint16_t off, unsigned size, std::uint32_t v);
  void program_msix(vdev& d, unsigned index, std::optional<irte_index> irte, bool masked);
  void mask_msix(vdev& d, unsigned index, bool masked);
  void free_vector(vdev& d, unsigned index);
  void reset_function(vdev& d);
  void release_device(vdev& d);   // ordinary VFIO release (disable, free, reset)
  void preserve_device(vdev& d);  // keepalive close
  void forget_keepalive(vdev& d); // reset path: everything back to RUNNING
  void fail_device(vdev& d, std::uint32_t event, int err);
  void queue_event(std::uint32_t type, bdf b, int err, std::uint64_t data);

  // ioctls
  long container_ioctl(file& f, unsigned long cmd, void* arg);
  long group_ioctl(int pid, file& f, unsigned long cmd, void* arg);
  long device_ioctl(file& f, unsigned long cmd, void* arg);
  long control_ioctl(file& f, unsigned long cmd, void* arg);
  long vm_ioctl(int pid, file& f, unsigned long cmd, void* arg);
  long set_irqs(vdev& d, vfio_irq_set& hdr, std::span<const std::int32_t> fds);
  long bypass(int pid, file& vm, const ka_sim_irq_bypass& req);
  void close_file(file& f);
  void drop_container(std::shared_ptr<file>& c);

  // keepalive
  errc ka_enter(vdev& d, vfio_keepalive_enter& r);
  errc ka_leave(vdev& d, vfio_keepalive_leave& r);
  errc ka_status(vdev& d, vfio_keepalive_status& r);
  errc ka_info(vfio_keepalive_info& r);
  errc ka_list(vfio_keepalive_list& r);
  errc ka_prepare(vfio_keepalive_stage2& r);
  errc ka_abort(vfio_keepalive_stage2& r);
  errc ka_event(vfio_keepalive_event& r);
  errc ka_reset(vfio_keepalive_reset& r);
  // dispatch-table rows (need linkage: static members, not lambdas)
  static errc op_enter(dev_ctx& c, vfio_keepalive_enter& r) { return c.k.ka_enter(c.d, r); }
  static errc op_leave(dev_ctx& c, vfio_keepalive_leave& r) { return c.k.ka_leave(c.d, r); }
  static errc op_status(dev_ctx& c, vfio_keepalive_status& r) { return c.k.ka_status(c.d, r); }
  static errc op_get_iommufd(dev_ctx& c, vfio_keepalive_iommufd& r) { return ka_get_iommufd(c.d, r); }
  static errc op_create_pid(vm_ctx& c, ka_sim_pid& r);
  static errc op_bypass(vm_ctx& c, ka_sim_irq_bypass& r);
  static errc op_info(ctl_ctx& c, vfio_keepalive_info& r) { return c.k.ka_info(r); }
  static errc op_list(ctl_ctx& c, vfio_keepalive_list& r) { return c.k.ka_list(r); }
  static errc op_prepare(ctl_ctx& c, vfio_keepalive_stage2& r) { return c.k.ka_prepare(r); }
  static errc op_abort(ctl_ctx& c, vfio_keepalive_stage2& r) { return c.k.ka_abort(r); }
  static errc op_event(ctl_ctx& c, vfio_keepalive_event& r) { return c.k.ka_event(r); }
  static errc op_reset(ctl_ctx& c, vfio_keepalive_reset& r) { return c.k.ka_reset(r); }

  platform& plat_;
  kernel_config cfg_;
  // Recursive: an ioctl that unmasks a vector may have the device send the
  // pending message synchronously, re-entering through on_interrupt().
  mutable std::recursive_mutex mu_;
  std::shared_ptr<irq_gate> gate_;
  kmem mem_;
  hpa root_table_, ir_table_;
  std::map<std::uint8_t, hpa> context_tables_;  // bus -> context table
  std::vector<bool> irte_used_, did_used_;
  std::map<std::uint32_t, std::pair<vdev*, unsigned>> host_vectors_;  // host_key -> (device, MSI-X index)
  std::vector<std::unique_ptr<vdev>> devices_;
  std::map<std::uint64_t, std::weak_ptr<pid_obj>> pids_;  // by hpa
  std::vector<hpa> pid_pages_, free_pid_slots_;
  void reap_pids();
  std::uint32_t next_pid_id_ = 1;
  std::map<int, fd_table> processes_;
  int last_pid_ = 0, next_file_id_ = 1;
  std::deque<event_rec> events_;
  std::uint64_t event_seq_ = 1;
  bool stage2_prepared_ = false;
  kernel_stats stats_;
};

}  // namespace keepalive::sim
