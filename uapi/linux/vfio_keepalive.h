/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * vfio_keepalive.h - keep a VFIO passthrough device running while its VMM
 * restarts (stage 1) and while the host kexec-reboots (stage 2).
 *
 * This header is the specification of the keepalive user ABI. The simulated
 * host (kernel/sim) and the Linux patches (kernel/linux) both implement it and
 * one conformance suite (tests/conformance) runs against both.
 *
 * DOC: General ioctl format (iommufd / LUO house style)
 *
 * Every ioctl takes a pointer to a struct whose first two fields are
 * `__u32 size` (sizeof the struct as userspace knows it) and `__u32 flags`.
 * The kernel copies min(size, sizeof) bytes and then:
 *  - size < offsetofend(last mandatory field)           -> EINVAL
 *  - size > sizeof and any byte beyond sizeof non-zero  -> E2BIG
 *    (zero trailing bytes are accepted: an old kernel serves a newer struct
 *    as long as userspace does not ask for anything new)
 *  - a flag bit the kernel does not know                -> EINVAL
 *  - a `__reserved` field that is not zero              -> EINVAL
 * Output fields are named out_*; they are written only on success (and on
 * EOVERFLOW, which reports the count needed in the same struct). 64-bit
 * fields are __aligned_u64 so the layout is the same for 32- and 64-bit
 * userspace.
 *
 * DOC: errno contract (every ioctl; each ioctl below lists which it returns)
 *  ENOTTY      unknown ioctl number on this fd
 *  EINVAL      size too small, unknown flag, non-zero __reserved, all-zero
 *              token, a field out of range
 *  E2BIG       non-zero bytes past the end of the struct the kernel knows
 *  EOPNOTSUPP  the platform cannot keep this device's interrupts alive
 *              (no posted interrupts and masking not permitted/possible)
 *  EACCES      wrong or missing token for a device in keepalive
 *  ENOENT      no such device, or the device is not in keepalive
 *  EBUSY       the request is not a legal transition from the device's
 *              current state (the transition table in fsm/device.hpp)
 *  EOVERFLOW   an output array is too small; the required count is returned
 *  ENOMEM      out of memory (state unchanged)
 *  EAGAIN      event queue empty
 *  EPROTO      a handover image is corrupt, truncated or of an unknown
 *              version: it is refused as a whole, never half-applied
 *  EIO         the device failed (e.g. vanished after kexec); see the events
 *  EMFILE      no file descriptor left for a file the ioctl returns
 *
 * DOC: Device lifecycle (every arc in prose in include/keepalive/fsm/device.hpp;
 * values are the uapi state numbers)
 *
 *   RUNNING    --enter(token)--> KEPT_ALIVE --close--> OWNERLESS
 *   KEPT_ALIVE --leave(token)--> RUNNING             (owner changes its mind)
 *   OWNERLESS  --open(token)---> RECLAIMED --leave(token)--> RUNNING
 *   RECLAIMED  --close---------> OWNERLESS           (new owner died first)
 *   OWNERLESS, RESTORED --stage2 prepare--> FROZEN --kexec--> RESTORED
 *   FROZEN     --stage2 abort--> OWNERLESS           (also when it was RESTORED)
 *   RESTORED   --open(token)---> RECLAIMED
 *   OWNERLESS, RESTORED, ERROR --VFIO_KEEPALIVE_RESET_DEVICE--> RUNNING
 *   any other  --failure-------> ERROR
 * The state is checked before the token: a request that is not an arc from
 * the current state is EBUSY whatever the token (ENOENT for a reclaim of a
 * RUNNING device); a legal arc with a wrong token is EACCES.
 *
 * While a device is KEPT_ALIVE, OWNERLESS, RECLAIMED, FROZEN or RESTORED the
 * kernel never disables it, resets it, clears Bus Master Enable, frees its
 * IRTEs or tears down its IOMMU domain — except on the two arcs that exist
 * for it: VFIO_KEEPALIVE_RESET_DEVICE (operator) and failure (-> ERROR, with
 * an event). The device may DMA and raise interrupts at any time: DMA goes
 * through the preserved second-level tables; interrupts are posted into the
 * preserved posted-interrupt descriptor (PIR) with SN set, or (with
 * VFIO_KEEPALIVE_ENTER_ALLOW_MASKING on a platform without posting) held in
 * the MSI-X pending bits while the vector is masked.
 *
 * DOC: Reclaim
 * A device in keepalive is reopened only with its token, through VFIO's
 * existing conventions: the group path passes the device name as
 * "<bdf> vf_token=<uuid>" to VFIO_GROUP_GET_DEVICE_FD; the cdev path passes
 * the token to VFIO_DEVICE_BIND_IOMMUFD (VFIO_DEVICE_BIND_FLAG_TOKEN), binding
 * to the iommufd context the device was parked in, which it first obtains with
 * VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD (below). A device kept alive without an
 * iommufd binding (parked through its group's container, or RESTORED after
 * kexec) is reclaimed through its group: a BIND_IOMMUFD with its token is
 * EOPNOTSUPP and changes nothing (its DMA keeps its translation).
 * Missing or wrong token -> EACCES, nothing changes. A device that is not in
 * keepalive opened with a keepalive token -> ENOENT. The reopened device is
 * RECLAIMED: its vectors are re-attached when the new owner sets them up
 * again (VFIO_DEVICE_SET_IRQS, same vector index), anything posted meanwhile
 * is delivered, and VFIO_DEVICE_KEEPALIVE_LEAVE returns it to RUNNING.
 */
#ifndef _UAPI_LINUX_VFIO_KEEPALIVE_H
#define _UAPI_LINUX_VFIO_KEEPALIVE_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define VFIO_KEEPALIVE_ABI_VERSION 1u
#define VFIO_KEEPALIVE_TOKEN_SIZE 16
/* Control node for the host (one per host): */
#define VFIO_KEEPALIVE_CTL_PATH "/dev/vfio/keepalive"

/* Same ioctl type as VFIO (';'); numbers 0xC0.. are unused by VFIO/iommufd. */
#define VFIO_KEEPALIVE_TYPE ';'
#define VFIO_KEEPALIVE_BASE 0xC0

enum vfio_keepalive_state {
	VFIO_KEEPALIVE_STATE_RUNNING = 0,    /* ordinary VFIO device, not kept alive */
	VFIO_KEEPALIVE_STATE_KEPT_ALIVE = 1, /* flag + token set; owner still holds the fd */
	VFIO_KEEPALIVE_STATE_OWNERLESS = 2,  /* owner closed; device live, nobody owns it */
	VFIO_KEEPALIVE_STATE_RECLAIMED = 3,  /* reopened with the token; flag still set */
	VFIO_KEEPALIVE_STATE_FROZEN = 4,     /* serialised for kexec (stage 2 prepared) */
	VFIO_KEEPALIVE_STATE_RESTORED = 5,   /* rebuilt after kexec from the handover image */
	VFIO_KEEPALIVE_STATE_ERROR = 6,      /* left only by reset */
};

/* How a preserved device's interrupts are held while nobody owns it. */
enum vfio_keepalive_irq_mode {
	VFIO_KEEPALIVE_IRQ_NONE = 0,    /* no vectors set up */
	VFIO_KEEPALIVE_IRQ_POSTED = 1,  /* posted IRTEs into descriptors with SN=1 */
	VFIO_KEEPALIVE_IRQ_MASKED = 2,  /* MSI-X vectors masked; pending bits hold them */
};

/* ---------------------------------------------------------------------------
 * Device fd ioctls
 */

/**
 * struct vfio_keepalive_enter - VFIO_DEVICE_KEEPALIVE_ENTER
 * @size: sizeof(struct vfio_keepalive_enter)
 * @flags: VFIO_KEEPALIVE_ENTER_*
 * @token: 16-byte UUID; must not be all zero. The next owner presents it.
 * @__reserved: must be 0
 * @out_irq_mode: enum vfio_keepalive_irq_mode chosen for this device
 * @out_nr_vectors: number of vectors preserved
 *
 * RUNNING -> KEPT_ALIVE. From now on closing the fd moves the device to
 * OWNERLESS instead of disabling it. All-or-nothing: on error nothing changed.
 * The DMA context that stays is the group's container (group path) or the
 * device's iommufd binding (cdev path: bound and attached to an IOAS or HWPT,
 * no PASID attachment).
 * Errors: EINVAL, E2BIG, EOPNOTSUPP (interrupts cannot be kept: no posting and
 * ALLOW_MASKING not given or the device has no per-vector masking; or no DMA
 * context that can stay: no container, or a cdev device not attached), EBUSY
 * (not RUNNING, e.g. double enter), ENOMEM.
 */
struct vfio_keepalive_enter {
	__u32 size;
	__u32 flags;
#define VFIO_KEEPALIVE_ENTER_ALLOW_MASKING (1u << 0)
	__u8 token[VFIO_KEEPALIVE_TOKEN_SIZE];
	__u32 __reserved;
	__u32 out_irq_mode;
	__u32 out_nr_vectors;
	__u32 __reserved2;
};
#define VFIO_DEVICE_KEEPALIVE_ENTER _IO(VFIO_KEEPALIVE_TYPE, VFIO_KEEPALIVE_BASE + 0)

/**
 * struct vfio_keepalive_leave - VFIO_DEVICE_KEEPALIVE_LEAVE
 * @size: sizeof(struct vfio_keepalive_leave)
 * @flags: must be 0
 * @token: the token given at enter
 *
 * KEPT_ALIVE -> RUNNING (the owner changes its mind, e.g. a rollback) or
 * RECLAIMED -> RUNNING (the new owner has re-attached its vectors: the talk's
 * "set-keepalive off"). Vectors the new owner did not set up again are freed
 * now (their IRTEs released). Errors: EINVAL, E2BIG, EACCES (wrong token),
 * EBUSY (neither KEPT_ALIVE nor RECLAIMED).
 */
struct vfio_keepalive_leave {
	__u32 size;
	__u32 flags;
	__u8 token[VFIO_KEEPALIVE_TOKEN_SIZE];
};
#define VFIO_DEVICE_KEEPALIVE_LEAVE _IO(VFIO_KEEPALIVE_TYPE, VFIO_KEEPALIVE_BASE + 1)

/**
 * struct vfio_keepalive_status - VFIO_DEVICE_KEEPALIVE_GET_STATUS
 * @size: sizeof(struct vfio_keepalive_status)
 * @flags: must be 0
 * @out_state: enum vfio_keepalive_state
 * @out_irq_mode: enum vfio_keepalive_irq_mode
 * @out_nr_vectors: vectors preserved (0 when RUNNING)
 * @out_nr_pending: vectors with an interrupt posted/pending while unowned
 * @out_domain_id: VT-d domain ID of the device's (preserved) domain, 0 if none
 * @__reserved: must be 0
 * @out_dma_faults: DMA remapping faults recorded for this device's source ID
 *
 * Never changes state. Errors: EINVAL, E2BIG.
 */
struct vfio_keepalive_status {
	__u32 size;
	__u32 flags;
	__u32 out_state;
	__u32 out_irq_mode;
	__u32 out_nr_vectors;
	__u32 out_nr_pending;
	__u32 out_domain_id;
	__u32 __reserved;
	__aligned_u64 out_dma_faults;
};
#define VFIO_DEVICE_KEEPALIVE_GET_STATUS _IO(VFIO_KEEPALIVE_TYPE, VFIO_KEEPALIVE_BASE + 2)

/**
 * struct vfio_keepalive_iommufd - VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD
 * @size: sizeof(struct vfio_keepalive_iommufd)
 * @flags: must be 0
 * @token: the token given at enter
 * @out_iommufd: a new file descriptor (O_CLOEXEC) for the iommufd context the
 *               device is parked in
 * @__reserved: must be 0
 *
 * The cdev/iommufd counterpart of the group path's parked container. A device
 * that entered keepalive while bound to an iommufd context
 * (VFIO_DEVICE_BIND_IOMMUFD + VFIO_DEVICE_ATTACH_IOMMUFD_PT) stays bound and
 * attached when its owner closes it: the context - IOAS, HWPT, the IOMMU
 * domain with its tables and domain ID, the pinned pages - outlives every
 * file descriptor, held only by the parked binding. The next owner opens the
 * device's cdev and, before binding, asks for that context with the token
 * (the only keepalive ioctl a cdev fd accepts before VFIO_DEVICE_BIND_IOMMUFD).
 * It then binds to it (VFIO_DEVICE_BIND_IOMMUFD with this fd and the token:
 * the same out_devid), attaches to the same IOAS or HWPT (a no-op that
 * returns the same HWPT) and takes the mappings over with
 * IOMMU_IOAS_CHANGE_PROCESS: nothing is unmapped or re-mapped. Binding a
 * parked device to any other context is EBUSY. The fd is the context: whoever
 * holds it can change the mappings, hence the token. Never changes state.
 * Errors: EINVAL, E2BIG, ENOENT (not parked in an iommufd context: RUNNING,
 * parked through its group, or RESTORED - no iommufd context survives a
 * kexec; such a device is reclaimed through its group), EBUSY (KEPT_ALIVE,
 * RECLAIMED, FROZEN, ERROR), EACCES (wrong token), EMFILE.
 */
struct vfio_keepalive_iommufd {
	__u32 size;
	__u32 flags;
	__u8 token[VFIO_KEEPALIVE_TOKEN_SIZE];
	__s32 out_iommufd;
	__u32 __reserved;
};
#define VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD _IO(VFIO_KEEPALIVE_TYPE, VFIO_KEEPALIVE_BASE + 3)

/* ---------------------------------------------------------------------------
 * Control node ioctls (VFIO_KEEPALIVE_CTL_PATH, CAP_SYS_ADMIN)
 */

/**
 * struct vfio_keepalive_info - VFIO_KEEPALIVE_GET_INFO
 * @size: sizeof(struct vfio_keepalive_info)
 * @flags: must be 0
 * @out_version: VFIO_KEEPALIVE_ABI_VERSION
 * @out_caps: VFIO_KEEPALIVE_CAP_*
 * @out_nr_devices: devices not RUNNING (kept alive in any state, or ERROR)
 * @__reserved: must be 0
 * @out_generation: incremented by every completed stage-2 (kexec) cycle
 *
 * Errors: EINVAL, E2BIG.
 */
struct vfio_keepalive_info {
	__u32 size;
	__u32 flags;
	__u32 out_version;
	__u32 out_caps;
#define VFIO_KEEPALIVE_CAP_POSTED_INTR (1u << 0) /* IRTEs can post into descriptors */
#define VFIO_KEEPALIVE_CAP_MSI_MASKING (1u << 1) /* masking fallback available */
#define VFIO_KEEPALIVE_CAP_STAGE2 (1u << 2)      /* devices survive kexec */
#define VFIO_KEEPALIVE_CAP_EVENTS (1u << 3)      /* VFIO_KEEPALIVE_READ_EVENT */
	__u32 out_nr_devices;
	__u32 __reserved;
	__aligned_u64 out_generation;
};
#define VFIO_KEEPALIVE_GET_INFO _IO(VFIO_KEEPALIVE_TYPE, VFIO_KEEPALIVE_BASE + 8)

/**
 * struct vfio_keepalive_device_entry - one row of VFIO_KEEPALIVE_LIST_DEVICES
 * @bdf: PCI segment/bus/device/function, (seg << 16) | (bus << 8) | devfn
 * @state: enum vfio_keepalive_state
 * @irq_mode: enum vfio_keepalive_irq_mode
 * @nr_vectors: preserved vectors
 * @nr_pending: vectors with something pending
 * @domain_id: preserved VT-d domain ID
 */
struct vfio_keepalive_device_entry {
	__u32 bdf;
	__u32 state;
	__u32 irq_mode;
	__u32 nr_vectors;
	__u32 nr_pending;
	__u32 domain_id;
};

/**
 * struct vfio_keepalive_list - VFIO_KEEPALIVE_LIST_DEVICES
 * @size: sizeof(struct vfio_keepalive_list)
 * @flags: must be 0
 * @nr_entries: in: capacity of @entries_uptr; out: number of devices
 * @__reserved: must be 0
 * @entries_uptr: user pointer to an array of struct vfio_keepalive_device_entry
 *
 * Lists every device that is not RUNNING, in BDF order. Errors: EINVAL,
 * E2BIG, EOVERFLOW (capacity too small: @nr_entries holds the count needed
 * and nothing else was written), EFAULT.
 */
struct vfio_keepalive_list {
	__u32 size;
	__u32 flags;
	__u32 nr_entries;
	__u32 __reserved;
	__aligned_u64 entries_uptr;
};
#define VFIO_KEEPALIVE_LIST_DEVICES _IO(VFIO_KEEPALIVE_TYPE, VFIO_KEEPALIVE_BASE + 9)

/**
 * struct vfio_keepalive_stage2 - VFIO_KEEPALIVE_STAGE2_PREPARE / _ABORT
 * @size: sizeof(struct vfio_keepalive_stage2)
 * @flags: must be 0
 * @out_nr_devices: devices frozen (PREPARE) or thawed (ABORT)
 * @__reserved: must be 0
 * @out_image_bytes: size of the handover image written to preserved memory
 *
 * PREPARE: every OWNERLESS or RESTORED device -> FROZEN; its domain, tables,
 * IRTEs and descriptors are serialised into the handover image (kernel/abi,
 * versioned and checksummed). A following kexec rebuilds them from the image
 * alone. All-or-nothing. ABORT: FROZEN -> OWNERLESS, image discarded.
 * Errors: EINVAL, E2BIG, EBUSY (PREPARE: a device is KEPT_ALIVE or RECLAIMED,
 * i.e. still owned, or stage 2 is already prepared; ABORT: nothing prepared),
 * ENOMEM.
 */
struct vfio_keepalive_stage2 {
	__u32 size;
	__u32 flags;
	__u32 out_nr_devices;
	__u32 __reserved;
	__aligned_u64 out_image_bytes;
};
#define VFIO_KEEPALIVE_STAGE2_PREPARE _IO(VFIO_KEEPALIVE_TYPE, VFIO_KEEPALIVE_BASE + 10)
#define VFIO_KEEPALIVE_STAGE2_ABORT _IO(VFIO_KEEPALIVE_TYPE, VFIO_KEEPALIVE_BASE + 11)

enum vfio_keepalive_event_type {
	VFIO_KEEPALIVE_EVENT_NONE = 0,
	/* after kexec the device did not enumerate (gone, resource conflict):
	 * out_errno says why; the device is ERROR and was reset */
	VFIO_KEEPALIVE_EVENT_ENUM_FAILED = 1,
	/* the handover image was refused (out_errno EPROTO); every device it
	 * named was reset safely and is ERROR */
	VFIO_KEEPALIVE_EVENT_HANDOVER_REJECTED = 2,
	/* AER error reported while the device had no owner; out_data = status */
	VFIO_KEEPALIVE_EVENT_AER = 3,
	/* DMA remapping fault while unowned; out_data = faulting IOVA */
	VFIO_KEEPALIVE_EVENT_DMA_FAULT = 4,
	/* interrupt-remapping fault while unowned; out_data = IRTE index */
	VFIO_KEEPALIVE_EVENT_IR_FAULT = 5,
	/* the device was reset (ERROR -> RUNNING or by the operator) */
	VFIO_KEEPALIVE_EVENT_RESET = 6,
};

/**
 * struct vfio_keepalive_event - VFIO_KEEPALIVE_READ_EVENT
 * @size: sizeof(struct vfio_keepalive_event)
 * @flags: must be 0
 * @out_seq: sequence number, strictly increasing across kexec
 * @out_type: enum vfio_keepalive_event_type
 * @out_bdf: device the event concerns
 * @out_errno: positive errno, when the event carries one
 * @__reserved: must be 0
 * @out_data: type-specific
 *
 * Dequeues the oldest event. Errors: EINVAL, E2BIG, EAGAIN (queue empty).
 */
struct vfio_keepalive_event {
	__u32 size;
	__u32 flags;
	__aligned_u64 out_seq;
	__u32 out_type;
	__u32 out_bdf;
	__u32 out_errno;
	__u32 __reserved;
	__aligned_u64 out_data;
};
#define VFIO_KEEPALIVE_READ_EVENT _IO(VFIO_KEEPALIVE_TYPE, VFIO_KEEPALIVE_BASE + 12)

/**
 * struct vfio_keepalive_reset - VFIO_KEEPALIVE_RESET_DEVICE
 * @size: sizeof(struct vfio_keepalive_reset)
 * @flags: must be 0
 * @bdf: device to reset
 * @__reserved: must be 0
 *
 * The operator's way out: an OWNERLESS, RESTORED or ERROR device is reset
 * (FLR), its IRTEs freed and its domain torn down, and it becomes RUNNING
 * (unowned, ordinary); VFIO_KEEPALIVE_EVENT_RESET is queued. Errors: EINVAL,
 * E2BIG, ENOENT (no such device), EBUSY (any other state: owned, FROZEN, or
 * already RUNNING).
 */
struct vfio_keepalive_reset {
	__u32 size;
	__u32 flags;
	__u32 bdf;
	__u32 __reserved;
};
#define VFIO_KEEPALIVE_RESET_DEVICE _IO(VFIO_KEEPALIVE_TYPE, VFIO_KEEPALIVE_BASE + 13)

#endif /* _UAPI_LINUX_VFIO_KEEPALIVE_H */
