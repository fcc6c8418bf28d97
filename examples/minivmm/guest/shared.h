/* SPDX-License-Identifier: MIT */
/*
 * The contract between the minivmm VMM and its freestanding guest: the guest
 * physical memory map, the boot-info page the VMM writes before the first
 * KVM_RUN, and the counters page only the guest writes (the VMM and the test
 * harness read it). Plain C, no libc, shared by guest/guest.c and src/.
 *
 * The guest keeps ALL of its state in guest RAM (counters page, ring, its
 * consumer index): a VMM restart, which keeps guest RAM and restores the vCPU
 * registers, is invisible to it except as a longer gap between interrupts.
 *
 * Guest physical map (identity-mapped by the VMM's page tables, 2 MiB pages,
 * first 4 GiB; IOVA = GPA for the passthrough device):
 *   0x1000  GDT (null, code64, data) and a 64-bit TSS
 *   0x2000  boot info (struct minivmm_boot_info)
 *   0x3000  counters (struct minivmm_counters)
 *   0x4000  PML4, 0x5000 PDPT, 0x6000-0x9fff four page directories
 *   0xa000  IDT (built by the guest)
 *   0x10000-0x80000  boot stack (grows down from 0x80000)
 *   0x100000  guest image (flat binary, entry at its first byte)
 *   0x200000  RX descriptor ring
 *   0x300000  verifier tables (expected payload per seq mod 256, checksum sums)
 *   0x400000  packet buffers
 *   bar0_gpa (above RAM, below 4 GiB): the NIC's BAR0, forwarded by the VMM
 *   0xfee00000  local APIC (in-kernel irqchip)
 */
#ifndef MINIVMM_SHARED_H
#define MINIVMM_SHARED_H

#ifdef __cplusplus
#include <cstddef>
#include <cstdint>
#define MV_U32 std::uint32_t
#define MV_U64 std::uint64_t
#define MV_STATIC_ASSERT static_assert
#else
#include <stddef.h>
#include <stdint.h>
#define MV_U32 uint32_t
#define MV_U64 uint64_t
#define MV_STATIC_ASSERT _Static_assert
#endif

#define MINIVMM_GDT_GPA 0x1000ull
#define MINIVMM_TSS_GPA 0x1800ull
#define MINIVMM_BOOT_INFO_GPA 0x2000ull
#define MINIVMM_COUNTERS_GPA 0x3000ull
#define MINIVMM_PML4_GPA 0x4000ull
#define MINIVMM_PDPT_GPA 0x5000ull
#define MINIVMM_PD_GPA 0x6000ull /* four pages: 4 GiB of 2 MiB pages */
#define MINIVMM_IDT_GPA 0xa000ull
#define MINIVMM_STACK_TOP 0x80000ull
#define MINIVMM_IMAGE_GPA 0x100000ull
#define MINIVMM_IMAGE_MAX 0x100000ull
#define MINIVMM_RING_GPA 0x200000ull
#define MINIVMM_TABLES_GPA 0x300000ull
#define MINIVMM_BUFFERS_GPA 0x400000ull
#define MINIVMM_LAPIC_GPA 0xfee00000ull

#define MINIVMM_GDT_CODE64 0x08u
#define MINIVMM_GDT_DATA 0x10u
#define MINIVMM_GDT_TSS 0x18u

#define MINIVMM_DEBUG_PORT 0xe9u /* guest console: one byte per OUT */
#define MINIVMM_NIC_VECTOR 0x40u
#define MINIVMM_IRQ_LOG 16u
#define MINIVMM_SPURIOUS_VECTOR 0xffu

#define MINIVMM_BOOT_MAGIC 0x544f4f424d564d4bull     /* "KMVMBOOT" */
#define MINIVMM_COUNTERS_MAGIC 0x544e54434d564d4bull /* "KMVMCTNT" */
#define MINIVMM_VERSION 1u

enum minivmm_verify_mode {
	MINIVMM_VERIFY_TABLES = 0,    /* payload words against per-(seq mod 256) tables, closed-form checksum */
	MINIVMM_VERIFY_REFERENCE = 1, /* ka_nic_payload_byte/ka_nic_checksum byte by byte */
};

/* Written by the VMM before the first run; gap_epoch may change later. */
struct minivmm_boot_info {
	MV_U64 magic;
	MV_U32 version;
	MV_U32 size;
	MV_U64 bar0_gpa;
	MV_U64 ring_gpa;
	MV_U64 buffers_gpa;
	MV_U64 tables_gpa;
	MV_U32 ring_entries;  /* power of two */
	MV_U32 buffer_bytes;  /* >= 16 + payload_bytes */
	MV_U32 payload_bytes; /* multiple of 8, 8..1024 */
	MV_U32 irq_mod_pkts;
	MV_U32 irq_mod_usec;
	MV_U32 verify_mode;   /* enum minivmm_verify_mode */
	MV_U64 tsc_khz;       /* guest TSC frequency (KVM_GET_TSC_KHZ) */
	MV_U64 gap_epoch;     /* bumped by the VMM: the guest restarts its largest-gap measurement */
};

enum minivmm_guest_state {
	MINIVMM_STATE_BOOTING = 0,
	MINIVMM_STATE_RUNNING = 1, /* driver initialised, CTRL.ENABLE set */
	MINIVMM_STATE_FAULTED = 2, /* a fault or an unexpected vector: see fault_* */
	MINIVMM_STATE_BAD_BOOT_INFO = 3,
};

/* Written only by the guest; every field an aligned 64-bit word. */
struct minivmm_counters {
	MV_U64 magic;
	MV_U64 state;          /* enum minivmm_guest_state */
	MV_U64 received;       /* descriptors consumed */
	MV_U64 lost;           /* sequence numbers skipped (sum of gap sizes) */
	MV_U64 gaps;           /* times a sequence number was skipped */
	MV_U64 reordered;      /* a sequence number below the expected one */
	MV_U64 corrupted;      /* bad length, payload or checksum */
	MV_U64 interrupts;     /* NIC vector taken */
	MV_U64 empty_interrupts; /* NIC vector with nothing completed */
	MV_U64 batches;        /* TAIL writes (one per non-empty interrupt) */
	MV_U64 spurious;       /* APIC spurious vector */
	MV_U64 expected_seq;   /* next sequence number expected */
	MV_U64 last_seq;
	MV_U64 ring_next;      /* the driver's consumer index */
	MV_U64 heartbeat;      /* wake-ups of the idle loop */
	MV_U64 tsc_boot;
	MV_U64 tsc_last_irq;   /* guest TSC at the last NIC interrupt */
	MV_U64 tsc_prev_irq;   /* ... and at the one before */
	MV_U64 max_irq_gap_tsc; /* largest TSC gap between two NIC interrupts this epoch */
	MV_U64 max_gap_end_tsc; /* guest TSC at the end of that gap */
	MV_U64 gap_epoch_seen;
	MV_U64 busy_tsc;       /* TSC cycles spent consuming (in the handler) */
	MV_U64 calib_instructions; /* instructions of the boot calibration loop */
	MV_U64 calib_tsc;      /* TSC cycles it took */
	MV_U64 fault_count;
	MV_U64 fault_vector;
	MV_U64 fault_error;
	MV_U64 fault_rip;
	MV_U64 fault_cr2;
	MV_U64 fault_rsp;
	MV_U64 irq_tsc_log[MINIVMM_IRQ_LOG]; /* TSC of NIC interrupt i at [i % MINIVMM_IRQ_LOG] (i from 1) */
};

MV_STATIC_ASSERT(sizeof(struct minivmm_boot_info) == 88, "boot info layout");
MV_STATIC_ASSERT(offsetof(struct minivmm_boot_info, tsc_khz) == 72, "boot info layout");
MV_STATIC_ASSERT(offsetof(struct minivmm_boot_info, gap_epoch) == 80, "boot info layout");
MV_STATIC_ASSERT(sizeof(struct minivmm_counters) == 46 * 8, "counters layout");
MV_STATIC_ASSERT(offsetof(struct minivmm_counters, max_irq_gap_tsc) == 18 * 8, "counters layout");
MV_STATIC_ASSERT(offsetof(struct minivmm_counters, fault_rsp) == 29 * 8, "counters layout");
MV_STATIC_ASSERT(offsetof(struct minivmm_counters, irq_tsc_log) == 30 * 8, "counters layout");

#undef MV_U32
#undef MV_U64
#undef MV_STATIC_ASSERT

#endif /* MINIVMM_SHARED_H */
