#include "fixture.hpp"

#include <fcntl.h>
#include <linux/vfio.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "nic_regs.h"
#include "sim_uapi.h"

namespace keepalive::transport_test {
namespace {
constexpr std::uint64_t bar0_region = std::uint64_t{VFIO_PCI_BAR0_REGION_INDEX} << 40;
constexpr std::uint64_t config_region = std::uint64_t{VFIO_PCI_CONFIG_REGION_INDEX} << 40;
status from_rc(long rc, const char* what) {
  if (rc < 0) return {errc_from_errno(static_cast<int>(-rc)), what};
  return {};
}
}  // namespace

// ------------------------------------------------------------------ programs

namespace {
std::vector<char*> c_argv(const std::vector<std::string>& argv) {
  std::vector<char*> v;
  for (const auto& a : argv) v.push_back(const_cast<char*>(a.c_str()));
  v.push_back(nullptr);
  return v;
}
int decode_status(int st) {
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return -1;
}
}  // namespace

run_result run_program(const std::vector<std::string>& argv) {
  int out[2], err[2];
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  pid_t pid = -1;
  auto args = c_argv(argv);
  const int rc = ::posix_spawn(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(out[1]);
  ::close(err[1]);
  REQUIRE(rc == 0);
  run_result r;
  pollfd p[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_pipes = 2;
  while (open_pipes > 0) {
    if (::poll(p, 2, 10000) <= 0) break;
    for (int i = 0; i < 2; ++i) {
      if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP))) continue;
      char buf[4096];
      const ssize_t n = ::read(p[i].fd, buf, sizeof buf);
      if (n <= 0) {
        ::close(p[i].fd);
        p[i].fd = -1;
        --open_pipes;
      } else {
        (i == 0 ? r.out : r.err).append(buf, static_cast<std::size_t>(n));
      }
    }
  }
  for (auto& q : p)
    if (q.fd >= 0) ::close(q.fd);
  int st = 0;
  REQUIRE(::waitpid(pid, &st, 0) == pid);
  r.exit_code = decode_status(st);
  return r;
}

std::unique_ptr<child> spawn_program(const std::vector<std::string>& argv) {
  int out[2];
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  pid_t pid = -1;
  auto args = c_argv(argv);
  const int rc = ::posix_spawn(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(out[1]);
  REQUIRE(rc == 0);
  auto c = std::make_unique<child>();
  c->pid = pid;
  c->out_fd = out[0];
  return c;
}

child::~child() {
  if (pid > 0) signal_and_wait(SIGKILL);
  if (out_fd >= 0) ::close(out_fd);
}

std::optional<std::string> child::read_line(int timeout_ms) {
  std::string line;
  for (;;) {
    pollfd p{out_fd, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return std::nullopt;
    char ch;
    if (::read(out_fd, &ch, 1) != 1) return std::nullopt;
    if (ch == '\n') return line;
    line += ch;
  }
}

int child::signal_and_wait(int sig) {
  if (pid <= 0) return -1;
  ::kill(pid, sig);
  int st = 0;
  const pid_t r = ::waitpid(pid, &st, 0);
  pid = -1;
  return r < 0 ? -1 : decode_status(st);
}

// ------------------------------------------------------------------ daemon

daemon_fixture::daemon_fixture(sim::kernel_mode mode, bool posted, unsigned nics) {
  char tmpl[] = "/tmp/ka-transport-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  dir = tmpl;
  socket = dir + "/simd.sock";
  simd::server_config cfg;
  cfg.socket_path = socket;
  cfg.phys_mib = test_phys_mib;
  cfg.nics = nics;
  cfg.mode = mode;
  cfg.posted_interrupts = posted;
  auto s = simd::server::start(cfg);
  REQUIRE(s);
  srv = std::move(*s);
  runner = std::thread{[this] { srv->run(); }};
}

daemon_fixture::~daemon_fixture() {
  // Stop the wire before the host goes away (as the in-process fixtures do).
  for (const auto& f : srv->hardware().functions())
    if (auto* n = srv->hardware().find_nic(f->address())) n->mmio_write(0, KA_NIC_RATE_PPS, 8, 0);
  srv->stop();
  runner.join();
  srv.reset();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

std::unique_ptr<sim_transport> daemon_fixture::connect() const {
  auto t = sim_transport::connect(socket);
  REQUIRE(t);
  return std::move(*t);
}

// ------------------------------------------------------------------ guest

std::byte* remote_guest::map(int phys_fd, std::uint64_t guest_start, std::uint64_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, phys_fd, static_cast<off_t>(guest_start));
  REQUIRE(p != MAP_FAILED);
  return static_cast<std::byte*>(p);
}

remote_guest::remote_guest(int phys_fd, std::uint64_t guest_start, const sim::testing::guest_layout& layout)
    : guest{map(phys_fd, guest_start, layout.ram_bytes), layout, {}}, bytes_{layout.ram_bytes} {}

remote_guest::~remote_guest() {
  stop();  // the consumer thread reads this mapping
  ::munmap(ram(), bytes_);
}

// ------------------------------------------------------------------ vmm

remote_vmm::remote_vmm(std::unique_ptr<sim_transport> t, remote_guest& g, const sim::testing::guest_layout& layout,
                       bdf nic)
    : t_{std::move(t)}, guest_{g}, layout_{layout}, nic_{nic} {}

status remote_vmm::open_device(const std::optional<token>& t) {
  auto& s = *t_;
  // Guest RAM is this VMM's own mapping of the memfd; MAP_DMA gets its pointer.
  ram_ = s.map_phys(s.guest_start(), layout_.ram_bytes);
  if (!ram_) return {errc::no_memory, "map guest RAM"};
  auto c = s.open("/dev/vfio/vfio", O_RDWR);
  if (!c) return c.err();
  container_ = *c;
  auto g = s.open("/dev/vfio/" + std::to_string(nic_.devfn()), O_RDWR);
  if (!g) return g.err();
  group_ = *g;
  if (auto st = from_rc(s.ioctl(group_, VFIO_GROUP_SET_CONTAINER, &container_), "SET_CONTAINER"); !st) return st;
  if (auto st = from_rc(s.ioctl(container_, VFIO_SET_IOMMU, reinterpret_cast<void*>(std::uintptr_t{VFIO_TYPE1v2_IOMMU})),
                        "SET_IOMMU");
      !st)
    return st;
  std::string name = t ? abi::reclaim_name(nic_, *t) : nic_.to_string();
  const long fd = s.ioctl(group_, VFIO_GROUP_GET_DEVICE_FD, name.data());
  if (fd < 0) return from_rc(fd, "GET_DEVICE_FD");
  device_ = static_cast<int>(fd);
  vfio_iommu_type1_dma_map map{};
  map.argsz = sizeof map;
  map.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
  map.vaddr = reinterpret_cast<std::uintptr_t>(ram_);  // a real pointer, as against real VFIO
  map.iova = 0;
  map.size = layout_.ram_bytes;
  if (auto st = from_rc(s.ioctl(container_, VFIO_IOMMU_MAP_DMA, &map), "MAP_DMA"); !st) return st;
  if (map.vaddr != reinterpret_cast<std::uintptr_t>(ram_)) return {errc::io, "MAP_DMA: vaddr not restored"};
  return {};
}

status remote_vmm::connect_vector() {
  auto& s = *t_;
  alignas(8) std::byte buf[sizeof(vfio_irq_set) + sizeof(std::int32_t)]{};
  auto* set = reinterpret_cast<vfio_irq_set*>(buf);
  set->argsz = sizeof buf;
  set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
  set->index = VFIO_PCI_MSIX_IRQ_INDEX;
  set->start = 0;
  set->count = 1;
  const std::int32_t efd = guest_.irq_fd();
  std::memcpy(buf + sizeof(vfio_irq_set), &efd, sizeof efd);
  if (auto st = from_rc(s.ioctl(device_, VFIO_DEVICE_SET_IRQS, set), "SET_IRQS"); !st) return st;
  std::int32_t back;
  std::memcpy(&back, buf + sizeof(vfio_irq_set), sizeof back);
  if (back != efd) return {errc::io, "SET_IRQS: eventfd not restored"};
  auto vm = s.open("/dev/kvm", O_RDWR);
  if (!vm) return vm.err();
  vm_ = *vm;
  ka_sim_pid pid{};
  pid.size = sizeof pid;
  pid.host_apic_id = 1;
  if (auto st = from_rc(s.ioctl(vm_, KA_SIM_CREATE_PID, &pid), "CREATE_PID"); !st) return st;
  ka_sim_irq_bypass b{};
  b.size = sizeof b;
  b.device_fd = device_;
  b.msix_index = 0;
  b.pid_id = pid.out_pid_id;
  b.guest_vector = 0x40;
  b.irqfd = guest_.irq_fd();
  const long rc = s.ioctl(vm_, KA_SIM_IRQ_BYPASS, &b);
  if (b.irqfd != guest_.irq_fd()) return {errc::io, "IRQ_BYPASS: irqfd not restored"};
  if (rc == -EOPNOTSUPP) return {};  // no posting: the vector stays remapped to the eventfd
  return from_rc(rc, "IRQ_BYPASS");
}

device_access remote_vmm::access() {
  return {[this](std::uint64_t reg) -> std::optional<std::uint64_t> {
            auto v = read_reg(reg);
            return v ? std::optional{*v} : std::nullopt;
          },
          [this](std::uint64_t reg, std::uint64_t v) { return static_cast<bool>(write_reg(reg, v)); }};
}

status remote_vmm::cold_start(std::uint64_t rate_pps, std::uint32_t irq_mod_pkts, std::uint32_t irq_mod_usec) {
  if (auto st = open_device(std::nullopt); !st) return st;
  std::uint16_t cmd = 0x6;  // memory space + bus master
  if (auto r = t_->pwrite(device_, std::as_bytes(std::span{&cmd, 1}), config_region + 4); !r) return r.err();
  if (auto st = connect_vector(); !st) return st;
  if (auto st = write_reg(KA_NIC_IRQ_MOD_PKTS, irq_mod_pkts); !st) return st;
  if (auto st = write_reg(KA_NIC_IRQ_MOD_USEC, irq_mod_usec); !st) return st;
  guest_.attach(access());
  if (!guest_.init_ring()) return {errc::io, "guest ring init"};
  return write_reg(KA_NIC_RATE_PPS, rate_pps);
}

status remote_vmm::reclaim(const std::optional<token>& t) {
  if (auto st = open_device(t); !st) return st;
  if (auto st = connect_vector(); !st) return st;
  guest_.attach(access());
  if (t) return leave_keepalive(*t);
  return {};
}

void remote_vmm::kill() {
  guest_.detach();
  t_.reset();
}

status remote_vmm::write_reg(std::uint64_t off, std::uint64_t v) {
  auto r = t_->pwrite(device_, std::as_bytes(std::span{&v, 1}), bar0_region + off);
  return r ? status{} : status{r.err()};
}

result<std::uint64_t> remote_vmm::read_reg(std::uint64_t off) {
  std::uint64_t v = 0;
  auto r = t_->pread(device_, std::as_writable_bytes(std::span{&v, 1}), bar0_region + off);
  if (!r) return r.err();
  return v;
}

}  // namespace keepalive::transport_test
