/* SPDX-License-Identifier: MIT */
/*
 * sim_uapi.h - the few calls the simulated host needs beyond
 * <linux/vfio.h> and <linux/vfio_keepalive.h>. They stand in for what KVM
 * does inside the real kernel: a vCPU's posted-interrupt descriptor and the
 * irq-bypass connection of a device vector to it (KVM_IRQFD + MSI routing on
 * Linux). Same house rules as the keepalive uapi (size/flags first, reserved
 * zero, E2BIG for non-zero tails).
 *
 * Node names understood by the sim kernel:
 *   /dev/vfio/vfio        VFIO container (type1)
 *   /dev/vfio/<N>         VFIO group N (one function per group; N = bus << 8 | devfn, the source ID)
 *   /dev/vfio/keepalive   keepalive control node
 *   /dev/kvm              a VM (the sim stand-in for KVM's posted interrupts)
 *
 * DMA mapping in the sim: VFIO_IOMMU_MAP_DMA's `vaddr` is the offset of the
 * guest RAM in the physical-memory file (the sim transport converts a VMM's
 * virtual address of its mapping to that offset). It must lie in the guest
 * RAM area, never in the kernel area.
 */
#ifndef KEEPALIVE_SIM_UAPI_H
#define KEEPALIVE_SIM_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define KA_SIM_TYPE 0xAE /* KVM's type: these stand in for KVM calls */
#define KA_SIM_BASE 0xE0

/**
 * struct ka_sim_pid - KA_SIM_CREATE_PID on a /dev/kvm fd
 * @host_apic_id: the host CPU the vCPU runs on (NDST of its descriptor)
 * @out_pid_id: handle of the descriptor within this VM
 * @out_pid_hpa: physical address of the 64-byte descriptor
 * Creates a vCPU posted-interrupt descriptor (NV = the sim's notification
 * vector, SN clear). Errors: EINVAL, E2BIG, ENOMEM.
 */
struct ka_sim_pid {
	__u32 size;
	__u32 flags;
	__u32 host_apic_id;
	__u32 out_pid_id;
	__aligned_u64 out_pid_hpa;
};
#define KA_SIM_CREATE_PID _IO(KA_SIM_TYPE, KA_SIM_BASE + 0)

/**
 * struct ka_sim_irq_bypass - KA_SIM_IRQ_BYPASS on a /dev/kvm fd
 * @device_fd: a VFIO device fd of the same process whose vector is connected
 * @msix_index: the device's MSI-X vector (set up with VFIO_DEVICE_SET_IRQS)
 * @pid_id: descriptor from KA_SIM_CREATE_PID
 * @guest_vector: vector posted into the descriptor's PIR
 * @irqfd: eventfd signalled when the guest vector is delivered (the VMM's
 *         KVM irqfd for that guest MSI)
 * Switches the vector's IRTE to posted format into the descriptor (irq
 * bypass). With KA_SIM_BYPASS_DISCONNECT the IRTE returns to remapped format
 * (delivery through the VFIO eventfd). If the vector was preserved by
 * keepalive, connecting reconnects the SAME IRTE and drains everything that
 * was posted while nobody owned the device into this descriptor.
 * Errors: EINVAL, E2BIG, EBADF (device_fd/irqfd), ENOENT (vector not set up,
 * pid unknown), EOPNOTSUPP (platform without posted interrupts).
 */
struct ka_sim_irq_bypass {
	__u32 size;
	__u32 flags;
#define KA_SIM_BYPASS_DISCONNECT (1u << 0)
	__s32 device_fd;
	__u32 msix_index;
	__u32 pid_id;
	__u32 guest_vector;
	__s32 irqfd;
	__u32 __reserved;
};
#define KA_SIM_IRQ_BYPASS _IO(KA_SIM_TYPE, KA_SIM_BASE + 1)

#endif /* KEEPALIVE_SIM_UAPI_H */
