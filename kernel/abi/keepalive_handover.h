/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * keepalive_handover.h - what crosses a kexec (stage 2), kernel to kernel.
 *
 * A contract between the old and the new kernel, separate from the user ABI:
 * packed *_ser structs, little-endian, each section introduced by a
 * NUL-padded compatible string. Any layout change bumps the string; a kernel
 * that does not know a string refuses the WHOLE image (EPROTO), resets every
 * device the image names and raises VFIO_KEEPALIVE_EVENT_HANDOVER_REJECTED:
 * an image is applied entirely or not at all.
 *
 * Image layout (all offsets from the start of the image):
 *   struct keepalive_handover_hdr_ser          compatible "keepalive-handover-v1"
 *   struct keepalive_iommu_ser                 compatible "keepalive-vtd-v1"
 *   nr_ranges  x struct keepalive_range_ser    memory the new kernel must not reuse
 *   nr_devices x (struct keepalive_device_ser  compatible "keepalive-vfio-pci-v1"
 *                 nr_vectors x struct keepalive_vector_ser)
 * The header's checksum is CRC-32C over the whole image with the checksum
 * field taken as zero. total_bytes must equal the bytes present; every count
 * is bounded by the KEEPALIVE_HANDOVER_MAX_* limits and by total_bytes.
 */
#ifndef _KEEPALIVE_HANDOVER_H
#define _KEEPALIVE_HANDOVER_H

#include <linux/types.h>

#define KEEPALIVE_HANDOVER_MAGIC 0x4b41484f56455231ULL /* "KAHOVER1" */
#define KEEPALIVE_HANDOVER_COMPAT "keepalive-handover-v1"
#define KEEPALIVE_VTD_COMPAT "keepalive-vtd-v1"
#define KEEPALIVE_VFIO_PCI_COMPAT "keepalive-vfio-pci-v1"
#define KEEPALIVE_COMPAT_LEN 32

#define KEEPALIVE_HANDOVER_MAX_DEVICES 256
#define KEEPALIVE_HANDOVER_MAX_VECTORS 2048 /* per device (MSI-X table size) */
#define KEEPALIVE_HANDOVER_MAX_RANGES 65536

struct keepalive_handover_hdr_ser {
	__u64 magic;
	char compatible[KEEPALIVE_COMPAT_LEN];
	__u32 checksum;     /* CRC-32C of the image, this field as 0 */
	__u32 nr_devices;
	__u64 total_bytes;
	__u64 generation;   /* stage-2 cycles completed before this one */
	__u64 event_seq;    /* next event sequence number: stays monotonic */
	__u32 nr_ranges;
	__u32 __reserved;
} __attribute__((packed));

/* The VT-d unit's programmed state: the new kernel adopts these tables
 * instead of allocating fresh ones (cf. the kdump path copying old tables). */
struct keepalive_iommu_ser {
	char compatible[KEEPALIVE_COMPAT_LEN];
	__u64 root_table;   /* RTADDR: root table physical address */
	__u64 irta;         /* IRTA register: IR table base | EIME | S */
	__u64 pid_area;     /* physical base of the preserved posted-interrupt descriptors */
	__u32 nr_pids;      /* descriptors in that area (64 bytes each) */
	__u32 __reserved;
} __attribute__((packed));

/* A physically contiguous range the old kernel handed over (tables, IR
 * table, descriptors): the new kernel's allocator must treat it as in use. */
struct keepalive_range_ser {
	__u64 start;
	__u64 bytes;
} __attribute__((packed));

struct keepalive_device_ser {
	char compatible[KEEPALIVE_COMPAT_LEN];
	__u32 bdf;
	__u32 state;          /* enum vfio_keepalive_state as it was: FROZEN */
	__u8 token[16];
	__u16 domain_id;      /* DID in the context entry, kept as is */
	__u8 levels;          /* second-level paging levels: 3, 4 or 5 */
	__u8 irq_mode;        /* enum vfio_keepalive_irq_mode */
	__u32 nr_vectors;
	__u64 sl_root;        /* second-level page-table root (context SLPTPTR) */
	__u64 bar[6];         /* BAR values to inherit: no reassignment */
	__u64 bar_size[6];
	__u16 command;        /* PCI command register (memory + bus master on) */
	__u16 msix_ctrl;      /* MSI-X message control (enable, table size) */
	__u32 __reserved;
} __attribute__((packed));

struct keepalive_vector_ser {
	__u16 msix_index;     /* the device's vector index */
	__u16 irte_index;     /* kept-aside IRTE, reconnected on the same index */
	__u8 posted;          /* 1: IRTE in posted format, pid is its descriptor */
	__u8 guest_vector;    /* the vector the guest programmed */
	__u16 __reserved;
	__u64 pid;            /* physical address of the descriptor (posted) */
} __attribute__((packed));

#endif /* _KEEPALIVE_HANDOVER_H */
