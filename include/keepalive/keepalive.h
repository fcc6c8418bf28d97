/* SPDX-License-Identifier: MIT */
/*
 * keepalive.h - the C API of keepalive::session and keepalive::snapshot, for
 * C VMMs (QEMU) and Rust VMMs (Cloud Hypervisor, through FFI). C99/C11,
 * usable from C++.
 *
 * Conventions: handles are opaque (ka_session, ka_snapshot). A function
 * returns 0 (or a count/fd >= 0) on success and a negative errno on failure,
 * the errno contract of uapi/linux/vfio_keepalive.h: -EBUSY for a call in the
 * wrong phase, -EACCES for a wrong token, -EINVAL for a malformed argument,
 * -EPROTO for a corrupt snapshot, ... ka_last_error(session) returns the
 * message of the session's last failure ("EBUSY (...): enter 0000:00:06.0
 * (device 3 of 5): ..."); ka_last_error(NULL) that of the calling thread's
 * last failed call that takes no session. Strings returned stay valid until
 * the next call on the same session (or thread) and are never NULL.
 *
 * The flow and its all-or-nothing rules are documented in
 * include/keepalive/session.hpp; in C:
 *
 *   ka_session *s; ka_open_linux(&s);
 *   ka_session_add_device(s, "0000:3b:00.0", 42);   -> device index 0
 *   ka_session_add_vector(s, 0, 0, 0x41, 2);        msix 0 -> vector 0x41 on vCPU 2
 *   ka_session_add_ram(s, &region);
 *   ka_session_open(s, &wiring);                    cold
 *   ... ka_session_freeze(s, "uuid", &state, 0, &snap);
 *   ka_snapshot_write_fd(snap, fd); ka_session_hand_over(s);
 *   or, close-first: ka_session_freeze(s, "uuid", NULL, 0, &snap);
 *   ka_session_hand_over(s); collect vCPU state (on failure ka_session_call_off);
 *   ka_snapshot_add_vmm_state(snap, &state); ka_snapshot_write_fd(snap, fd);
 *   -- new process --
 *   ka_snapshot_read_fd(fd, &snap); ka_snapshot_set_ram_vaddr(snap, 0, va);
 *   ka_session_reclaim(s, snap, &wiring);
 */
#ifndef KEEPALIVE_KEEPALIVE_H
#define KEEPALIVE_KEEPALIVE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ka_session ka_session;
typedef struct ka_snapshot ka_snapshot;

/* Canonical UUID text, with its NUL. */
#define KA_TOKEN_STRLEN 37

/* The syscall seam in C: how a session reaches a kernel. Every function
 * returns a value >= 0 or a negative errno, as the kernel does. */
struct ka_syscalls {
	void *user;
	long (*ioctl)(void *user, int fd, unsigned long cmd, void *arg);
	int (*open)(void *user, const char *path, int flags);
	int (*close)(void *user, int fd);
	int64_t (*pread)(void *user, int fd, void *buf, size_t len, uint64_t offset);
	int64_t (*pwrite)(void *user, int fd, const void *buf, size_t len, uint64_t offset);
};

/* ---- sessions ---------------------------------------------------------- */

/* Over the real kernel (open(2)/ioctl(2) on /dev/vfio/...). */
int ka_open_linux(ka_session **out);
/* Over a keepalive-simd daemon (the simulated host) on its Unix socket; NULL
 * or "" means $KEEPALIVE_SIMD_SOCKET, else /run/keepalive-simd.sock. The
 * connection is one process of the sim host: freeing the session is that
 * process exiting. */
int ka_connect_sim(const char *socket_path, ka_session **out);
/* Sim sessions only (-EINVAL otherwise). Guest RAM is a slice of the host's
 * physical memory: [*start, *start + *bytes) is the guest-RAM area; a shared
 * mapping of [offset, offset + len) gives the addresses to use as MAP_DMA
 * vaddrs (ka_ram_region.vaddr), as against real VFIO. Unmapped when the
 * session is freed. */
int ka_sim_guest_area(const ka_session *s, uint64_t *start, uint64_t *bytes);
int ka_sim_map_phys(ka_session *s, uint64_t offset, uint64_t len, void **addr);
/* Over any seam (a transport, a test host); *sys is copied, sys->user must
 * outlive the session. */
int ka_session_new(const struct ka_syscalls *sys, ka_session **out);
/* Closes every fd the session holds (a frozen session's devices become
 * OWNERLESS, as with ka_session_hand_over). NULL is accepted. */
void ka_session_free(ka_session *s);
const char *ka_last_error(const ka_session *s);
/* "EACCES" for -EACCES or EACCES. */
const char *ka_errno_name(int err);

enum ka_phase {
	KA_PHASE_IDLE = 0,
	KA_PHASE_RUNNING = 1,
	KA_PHASE_FROZEN = 2,
	KA_PHASE_HANDED_OVER = 3,
	KA_PHASE_RECLAIMED = 4,
	KA_PHASE_BROKEN = 5,
};
int ka_session_phase(const ka_session *s);

/* Idle phase: describe the VM. add_device returns the device index. */
int ka_session_add_device(ka_session *s, const char *bdf, uint32_t iommu_group);
int ka_session_add_vector(ka_session *s, uint32_t device_index, uint16_t msix_index, uint8_t guest_vector,
			  uint32_t vcpu);

struct ka_ram_region {
	uint64_t gpa;
	uint64_t iova;
	uint64_t size;
	uint64_t vaddr;          /* VFIO_IOMMU_MAP_DMA vaddr in this process */
	const char *backing;     /* shared memory file / memfd name; may be NULL */
	uint64_t backing_offset;
};
int ka_session_add_ram(ka_session *s, const struct ka_ram_region *r);

/* The KVM side, implemented by the VMM (see interrupt_wiring in
 * session.hpp). eventfd returns the vector's eventfd (>= 0) or -errno;
 * connect returns 0 or -errno; rolled_back may be NULL. */
struct ka_vector_binding {
	uint32_t device_index;
	uint32_t bdf;            /* (seg << 16) | (bus << 8) | devfn */
	int32_t device_fd;
	uint16_t msix_index;
	uint8_t guest_vector;
	uint8_t reserved;
	uint32_t vcpu;
};
struct ka_wiring {
	void *user;
	int (*eventfd)(void *user, const struct ka_vector_binding *b);
	int (*connect)(void *user, const struct ka_vector_binding *b, int eventfd);
	void (*rolled_back)(void *user, const struct ka_vector_binding *connected, size_t n);
};

/* idle -> running: cold open. */
int ka_session_open(ka_session *s, const struct ka_wiring *w);

/* State the VMM carries (opaque to the library). Tags: enum
 * keepalive::vcpu_state_tag (1 regs, 2 sregs, 3 fpu, 4 lapic, 5 msrs,
 * 6 events, 7 xcrs, 8 xsave, 9 debugregs, 10 mp_state, 11 cpuid;
 * >= KA_VCPU_STATE_VMM_PRIVATE for the VMM's own). */
#define KA_VCPU_STATE_VMM_PRIVATE 0x10000u
struct ka_vcpu_blob {
	uint32_t vcpu;
	uint32_t tag;
	const void *data;
	size_t len;
};
struct ka_vmm_state {
	uint32_t nr_vcpus;
	const struct ka_vcpu_blob *blobs;
	size_t nr_blobs;
	const void *extra;
	size_t extra_len;
};

#define KA_FREEZE_ALLOW_MASKING (1u << 0)
/* running -> frozen; *out receives the snapshot (free it). state NULL: the
 * close-first order (session.hpp, ORDER): the snapshot has no vCPU state and
 * cannot be encoded until ka_snapshot_add_vmm_state, called after
 * ka_session_hand_over with the state collected then. */
int ka_session_freeze(ka_session *s, const char *token, const struct ka_vmm_state *state, uint32_t flags,
		      ka_snapshot **out);
int ka_snapshot_add_vmm_state(ka_snapshot *snap, const struct ka_vmm_state *state);
int ka_session_thaw(ka_session *s);
int ka_session_hand_over(ka_session *s);
/* handed over -> running: the restart is called off after the close; the
 * devices are reclaimed into the same VM. */
int ka_session_call_off(ka_session *s, const struct ka_wiring *w);
int ka_session_reclaim(ka_session *s, const ka_snapshot *snap, const struct ka_wiring *w);
int ka_session_close(ka_session *s);
/* The documented fallback: reset the device(s), then ka_session_open. */
int ka_session_fallback_reset(ka_session *s, const char *bdf);
int ka_session_fallback_reset_all(ka_session *s, const ka_snapshot *snap);

/* The session's fds and seam, for the VMM's own device access. */
int ka_session_device_fd(const ka_session *s, uint32_t device_index);
long ka_ioctl(ka_session *s, int fd, unsigned long cmd, void *arg);
int ka_sys_open(ka_session *s, const char *path, int flags);
int ka_sys_close(ka_session *s, int fd);
int64_t ka_pread(ka_session *s, int fd, void *buf, size_t len, uint64_t offset);
int64_t ka_pwrite(ka_session *s, int fd, const void *buf, size_t len, uint64_t offset);

/* Phase timestamps (steady clock, nanoseconds). kind: ka_mark_name(). */
struct ka_mark {
	uint32_t kind;
	uint32_t device;         /* device index, or UINT32_MAX */
	int64_t ns;
};
/* Fills up to cap marks; *n = number of marks; -EOVERFLOW if cap < *n. */
int ka_session_timeline(const ka_session *s, struct ka_mark *out, size_t cap, size_t *n);
const char *ka_mark_name(uint32_t kind);

/* ---- tokens ------------------------------------------------------------ */

/* A random version-4 UUID into out[KA_TOKEN_STRLEN]. */
int ka_token_generate(char out[KA_TOKEN_STRLEN]);

/* ---- snapshots --------------------------------------------------------- */

void ka_snapshot_free(ka_snapshot *snap);
int ka_snapshot_write_fd(const ka_snapshot *snap, int fd);
int ka_snapshot_read_fd(int fd, ka_snapshot **out);
/* Encoded size into *len; -EOVERFLOW (and *len) when cap is too small. */
int ka_snapshot_encode(const ka_snapshot *snap, void *buf, size_t cap, size_t *len);
int ka_snapshot_decode(const void *buf, size_t len, ka_snapshot **out);

int ka_snapshot_token(const ka_snapshot *snap, char out[KA_TOKEN_STRLEN]);
uint32_t ka_snapshot_nr_vcpus(const ka_snapshot *snap);
size_t ka_snapshot_nr_devices(const ka_snapshot *snap);
struct ka_device_info {
	uint32_t bdf;
	uint32_t iommu_group;
	uint32_t irq_mode;       /* enum vfio_keepalive_irq_mode */
	uint32_t nr_vectors;
};
int ka_snapshot_device(const ka_snapshot *snap, size_t index, struct ka_device_info *out);
struct ka_vector_info {
	uint16_t msix_index;
	uint8_t guest_vector;
	uint8_t reserved;
	uint32_t vcpu;
};
int ka_snapshot_vector(const ka_snapshot *snap, size_t device, size_t index, struct ka_vector_info *out);
size_t ka_snapshot_nr_ram(const ka_snapshot *snap);
/* r->backing points into the snapshot. */
int ka_snapshot_ram(const ka_snapshot *snap, size_t index, struct ka_ram_region *out);
/* Where this process mapped region `index` (before reclaim). */
int ka_snapshot_set_ram_vaddr(ka_snapshot *snap, size_t index, uint64_t vaddr);
/* -ENOENT when the snapshot holds no such blob. */
int ka_snapshot_vcpu_state(const ka_snapshot *snap, uint32_t vcpu, uint32_t tag, const void **data, size_t *len);
int ka_snapshot_extra(const ka_snapshot *snap, const void **data, size_t *len);
/* Human-readable text (keepalivectl's), valid until the snapshot is freed. */
const char *ka_snapshot_describe(ka_snapshot *snap);

#ifdef __cplusplus
}
#endif

#endif /* KEEPALIVE_KEEPALIVE_H */
