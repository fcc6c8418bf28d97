// Scenario cdev (patched kernel): keepalive through the VFIO device cdev and
// iommufd, where it is not offered (only the group/type1 path keeps the DMA
// context): the keepalive token goes through VFIO_DEVICE_BIND_IOMMUFD's
// VFIO_DEVICE_BIND_FLAG_TOKEN like the group path's vf_token (ENOENT for a
// device not in keepalive), and ENTER on a cdev-bound device is EOPNOTSUPP.
// Prints "KA: cdev.<key>=<value>".
#include <dirent.h>
#include <fcntl.h>
#include <linux/ioctl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "guest.hpp"
#include "keepalive/abi/ops.hpp"

namespace ka_guest {
namespace {

namespace abi = keepalive::abi;

// Debian 12's kernel headers (6.1) predate the VFIO cdev and iommufd; these
// are Linux 7.3's include/uapi/linux/{vfio,iommufd}.h definitions.
struct vfio_device_bind_iommufd_73 {
  __u32 argsz;
  __u32 flags;
  __s32 iommufd;
  __u32 out_devid;
  __aligned_u64 token_uuid_ptr;
};
constexpr std::uint32_t bind_flag_token = 1u << 0;
constexpr unsigned long vfio_device_bind_iommufd = _IO(VFIO_TYPE, VFIO_BASE + 18);
struct vfio_device_attach_iommufd_pt_73 {
  __u32 argsz;
  __u32 flags;
  __u32 pt_id;
  __u32 pasid;
};
constexpr unsigned long vfio_device_attach_iommufd_pt = _IO(VFIO_TYPE, VFIO_BASE + 19);
struct iommu_ioas_alloc_73 {
  __u32 size;
  __u32 flags;
  __u32 out_ioas_id;
};
constexpr unsigned long iommu_ioas_alloc = _IO(';', 0x81);

std::string cdev_of(const std::string& bdf) {
  const std::string dir = "/sys/bus/pci/devices/" + bdf + "/vfio-dev";
  DIR* d = opendir(dir.c_str());
  if (!d) return {};
  std::string name;
  while (dirent* e = readdir(d))
    if (std::string{e->d_name}.rfind("vfio", 0) == 0) name = e->d_name;
  closedir(d);
  return name.empty() ? name : "/dev/vfio/devices/" + name;
}

int bind(int device, int iommufd, const keepalive::token* t) {
  vfio_device_bind_iommufd_73 b{};
  b.argsz = sizeof b;
  b.iommufd = iommufd;
  if (t) {
    b.flags = bind_flag_token;
    b.token_uuid_ptr = reinterpret_cast<std::uintptr_t>(t->raw().data());
  }
  return ioctl(device, vfio_device_bind_iommufd, &b) < 0 ? -errno : 0;
}

}  // namespace

int run_cdev() {
  const auto loc = find_edu();
  if (!loc) return fail("cdev", "find_edu");
  const std::string node = cdev_of(loc->bdf);
  report("cdev", "node", node.empty() ? "none" : node);
  const int iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
  const int device = node.empty() ? -1 : open(node.c_str(), O_RDWR | O_CLOEXEC);
  if (iommufd < 0 || device < 0) return fail("cdev", "open", -errno);

  keepalive::token::bytes raw{};
  raw.fill(0x77);
  const keepalive::token t{raw};
  report("cdev", "bind_with_token", bind(device, iommufd, &t));
  report("cdev", "bind", bind(device, iommufd, nullptr));
  iommu_ioas_alloc_73 ioas{};
  ioas.size = sizeof ioas;
  report("cdev", "ioas_alloc", ioctl(iommufd, iommu_ioas_alloc, &ioas) < 0 ? -errno : 0);
  vfio_device_attach_iommufd_pt_73 at{};
  at.argsz = sizeof at;
  at.pt_id = ioas.out_ioas_id;
  report("cdev", "attach", ioctl(device, vfio_device_attach_iommufd_pt, &at) < 0 ? -errno : 0);
  report("cdev", "enter",
         rc_of(abi::keepalive_enter(abi::linux_syscalls(), device, t, {.allow_masking = true})));
  if (const auto st = abi::keepalive_status(abi::linux_syscalls(), device))
    report("cdev", "state", static_cast<unsigned>(st->state));
  close(device);
  close(iommufd);
  report("cdev", "done", 1);
  return 0;
}

}  // namespace ka_guest
