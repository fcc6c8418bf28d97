/* SPDX-License-Identifier: MIT */
/*
 * The simulated streaming NIC's programming model, shared by the device model
 * (kernel/sim/platform/nic.cpp), the host-side consumers in tests and the
 * freestanding guest driver (examples/minivmm/guest). Plain C, no libc.
 *
 * PCI: vendor 0x1de5 ("keepalive"), device 0x0001. BAR0: 64-bit memory, 64 KiB:
 *   0x0000-0x0fff  registers below
 *   0x1000-0x8fff  MSI-X table (up to 2048 entries x 16 bytes; 4 by default)
 *   0x9000-0x90ff  MSI-X PBA
 * Only vector 0 is raised (RX); more vectors exist to exercise keepalive with
 * large MSI-X tables.
 * The device works only while Memory Space and Bus Master are enabled in the
 * command register, MSI-X is enabled, and CTRL.ENABLE is set.
 *
 * RX ring: RX_RING_SIZE descriptors (power of two) at RX_RING_BASE (an IOVA).
 * The DEVICE owns descriptors [HEAD, TAIL): it fills descriptor HEAD, sets DD, advances HEAD. The driver
 * consumes completed descriptors, clears DD, and advances TAIL to give them
 * back. HEAD == TAIL means the ring is full from the device's view (nothing
 * to fill): a packet generated then is DROPPED and counted, and its sequence
 * number is consumed, so a receiver sees the gap.
 * Interrupt: MSI-X vector 0 after IRQ_MOD_PKTS completed packets, or when
 * IRQ_MOD_USEC microseconds passed with completions not yet signalled.
 *
 * Behaviour a driver may rely on:
 *  - The device receives only while Memory Space, Bus Master, MSI-X enable
 *    and CTRL.ENABLE are all on and the ring is valid; otherwise every packet
 *    the wire delivers is a DROP (the sequence number still advances).
 *  - A masked vector (entry or function mask) does not stop the device: the
 *    message is held in the PBA and sent once when unmasked.
 *  - FLR clears every register, the MSI-X table (all masked), the PBA, the
 *    command register and the BARs; RATE_PPS and NEXT_SEQ belong to the link
 *    partner and survive it, so a reset shows up as a sequence gap.
 *  - Writing RX_RING_BASE or RX_RING_SIZE resets HEAD to 0.
 */
#ifndef KEEPALIVE_NIC_REGS_H
#define KEEPALIVE_NIC_REGS_H

#ifdef __cplusplus
#include <cstdint>
#define KA_U8 std::uint8_t
#define KA_U16 std::uint16_t
#define KA_U32 std::uint32_t
#define KA_U64 std::uint64_t
#else
#include <stdint.h>
#define KA_U8 uint8_t
#define KA_U16 uint16_t
#define KA_U32 uint32_t
#define KA_U64 uint64_t
#endif

#define KA_NIC_VENDOR_ID 0x1de5
#define KA_NIC_DEVICE_ID 0x0001
#define KA_NIC_BAR0_SIZE 0x10000
#define KA_NIC_MSIX_TABLE_OFF 0x1000
#define KA_NIC_MSIX_PBA_OFF 0x9000
#define KA_NIC_MSIX_VECTORS 4 /* default table size */
#define KA_NIC_MSIX_MAX_VECTORS 2048

/* registers (64-bit unless noted) */
#define KA_NIC_CTRL 0x00          /* bit 0: ENABLE */
#define KA_NIC_CTRL_ENABLE 1u
#define KA_NIC_RX_RING_BASE 0x08  /* IOVA of descriptor 0 */
#define KA_NIC_RX_RING_SIZE 0x10  /* entries, power of two, <= 65536 */
#define KA_NIC_RX_HEAD 0x18       /* device: next descriptor to fill (read-only) */
#define KA_NIC_RX_TAIL 0x20       /* driver: first descriptor not given to the device */
#define KA_NIC_RATE_PPS 0x28      /* packets per second; 0 stops generation */
#define KA_NIC_IRQ_MOD_PKTS 0x30  /* interrupt after this many completions (>= 1) */
#define KA_NIC_IRQ_MOD_USEC 0x38  /* ... or after this long with completions pending */
#define KA_NIC_PAYLOAD_LEN 0x40   /* payload bytes per packet, multiple of 4, 4..1024 */
#define KA_NIC_STAT_PACKETS 0x80  /* packets written to the ring */
#define KA_NIC_STAT_DROPS 0x88    /* packets dropped: ring full */
#define KA_NIC_STAT_IRQS 0x90     /* MSI-X messages sent */
#define KA_NIC_STAT_DMA_ERR 0x98  /* DMA that faulted (packet lost) */
#define KA_NIC_NEXT_SEQ 0xa0      /* sequence number of the next packet */

/* RX descriptor, 16 bytes, in guest memory */
struct ka_nic_rx_desc {
	KA_U64 buffer;  /* IOVA of a buffer of >= 16 + payload bytes */
	KA_U16 length;  /* device: bytes written */
	KA_U16 status;  /* device sets DD; driver clears it */
	KA_U32 reserved;
};
#define KA_NIC_DESC_DD 1u

/* packet as written into the buffer */
struct ka_nic_packet_hdr {
	KA_U64 seq;
	KA_U32 payload_len;
	KA_U32 checksum; /* ka_nic_checksum(seq, payload, payload_len) */
};

static inline KA_U8 ka_nic_payload_byte(KA_U64 seq, KA_U32 i)
{
	return (KA_U8)(seq * 131u + i * 7u + 1u);
}

/* Cheap enough for a guest running under instruction emulation. */
static inline KA_U32 ka_nic_checksum(KA_U64 seq, const KA_U8 *payload, KA_U32 len)
{
	KA_U32 a = (KA_U32)seq ^ 0x9e3779b9u, b = (KA_U32)(seq >> 32);
	KA_U32 i;
	for (i = 0; i < len; i++) {
		a += payload[i];
		b += a;
	}
	return (b << 16) ^ a;
}

#endif /* KEEPALIVE_NIC_REGS_H */
