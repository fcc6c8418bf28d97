/* SPDX-License-Identifier: MIT */
/*
 * The minivmm guest: a freestanding 64-bit driver for the sim NIC. The VMM
 * enters it in long mode with RDI = boot info. It builds its IDT, enables the
 * local APIC, programs the NIC through BAR0, and then sleeps in HLT: the NIC's
 * MSI (vector 0x40) runs the handler that consumes completed descriptors,
 * verifies every packet and returns them with one TAIL write per batch.
 * Everything it knows lives in guest RAM (counters page, ring, this image's
 * data), so a VMM restart that keeps RAM and vCPU state needs no cooperation.
 */
#include "nic_regs.h"
#include "shared.h"
#include "verify.h"

#define LAPIC_TPR 0x80u
#define LAPIC_EOI 0xb0u
#define LAPIC_SVR 0xf0u
#define LAPIC_SVR_ENABLE 0x100u

struct isr_frame {
	uint64_t r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
	uint64_t vector, error;
	uint64_t rip, cs, rflags, rsp, ss;
};

struct idt_gate {
	uint16_t offset_lo, selector;
	uint8_t ist, type_attr;
	uint16_t offset_mid;
	uint32_t offset_hi, zero;
};
_Static_assert(sizeof(struct idt_gate) == 16, "IDT gate");

extern char isr_stubs[];
void calib_loop(uint64_t n);
void guest_main(struct minivmm_boot_info *boot);
void isr_dispatch(struct isr_frame *f);

/* Driver parameters, copied from boot info at init (image data: guest RAM). */
static struct {
	volatile struct minivmm_counters *c;
	volatile uint8_t *bar0;
	volatile uint64_t *gap_epoch;
	struct ka_nic_rx_desc *ring;
	const uint8_t *buffers;
	const uint8_t *tables;
	uint32_t mask, buffer_bytes, payload, mode;
} drv;

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }

static void puts_dbg(const char *s)
{
	while (*s)
		outb(MINIVMM_DEBUG_PORT, (uint8_t)*s++);
}

static void put_hex(uint64_t v)
{
	char buf[19];
	buf[0] = '0';
	buf[1] = 'x';
	for (int i = 0; i < 16; i++) {
		const unsigned d = (unsigned)(v >> (60 - 4 * i)) & 0xfu;
		buf[2 + i] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
	}
	buf[18] = 0;
	puts_dbg(buf);
}

static inline void lapic_write(uint32_t reg, uint32_t v) { *(volatile uint32_t *)(MINIVMM_LAPIC_GPA + reg) = v; }
static inline uint32_t lapic_read(uint32_t reg) { return *(volatile uint32_t *)(MINIVMM_LAPIC_GPA + reg); }

static inline void nic_write(uint32_t reg, uint64_t v) { *(volatile uint64_t *)(drv.bar0 + reg) = v; }
static inline uint64_t nic_read(uint32_t reg) { return *(volatile uint64_t *)(drv.bar0 + reg); }

static void __attribute__((noreturn)) halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

static void set_gate(struct idt_gate *idt, unsigned v, uint64_t handler)
{
	struct idt_gate g;
	g.offset_lo = (uint16_t)handler;
	g.selector = MINIVMM_GDT_CODE64;
	g.ist = 0;
	g.type_attr = 0x8e; /* present, DPL 0, 64-bit interrupt gate */
	g.offset_mid = (uint16_t)(handler >> 16);
	g.offset_hi = (uint32_t)(handler >> 32);
	g.zero = 0;
	idt[v] = g;
}

static void load_idt(void)
{
	struct idt_gate *idt = (struct idt_gate *)MINIVMM_IDT_GPA;
	for (unsigned v = 0; v < 256; v++)
		set_gate(idt, v, (uint64_t)(isr_stubs + 16 * v));
	struct __attribute__((packed)) {
		uint16_t limit;
		uint64_t base;
	} idtr = {256 * sizeof(struct idt_gate) - 1, MINIVMM_IDT_GPA};
	__asm__ volatile("lidt %0" : : "m"(idtr));
}

static void fault(const struct isr_frame *f)
{
	volatile struct minivmm_counters *c = (volatile struct minivmm_counters *)MINIVMM_COUNTERS_GPA;
	uint64_t cr2;
	__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
	c->fault_vector = f->vector;
	c->fault_error = f->error;
	c->fault_rip = f->rip;
	c->fault_cr2 = cr2;
	c->fault_rsp = f->rsp;
	c->fault_count = c->fault_count + 1;
	c->state = MINIVMM_STATE_FAULTED;
	puts_dbg("minivmm-guest: fault vector ");
	put_hex(f->vector);
	puts_dbg(" error ");
	put_hex(f->error);
	puts_dbg(" rip ");
	put_hex(f->rip);
	puts_dbg(" cr2 ");
	put_hex(cr2);
	puts_dbg("\n");
	halt_forever();
}

/* Everything but an in-order, verified packet in TABLES mode: full checks,
 * counted in the counters page. Returns the next expected sequence number. */
static uint64_t __attribute__((noinline)) slow_packet(volatile struct minivmm_counters *c, uint64_t w,
						       const uint8_t *buf, uint64_t expected)
{
	const uint32_t n = drv.payload;
	struct ka_nic_packet_hdr h;
	__builtin_memcpy(&h, buf, sizeof h);
	const uint8_t *payload = buf + sizeof h;
	int ok = (uint32_t)(w & 0xffffu) == sizeof h + n && h.payload_len == n;
	if (ok)
		ok = drv.mode == MINIVMM_VERIFY_TABLES ? mv_verify_tables(drv.tables, n, h.seq, h.checksum, payload)
						       : mv_verify_reference(n, h.seq, h.checksum, payload);
	if (!ok)
		c->corrupted = c->corrupted + 1;
	if (h.seq == expected)
		return h.seq + 1;
	if (h.seq > expected) {
		c->lost = c->lost + (h.seq - expected);
		c->gaps = c->gaps + 1;
		return h.seq + 1;
	}
	c->reordered = c->reordered + 1;
	return expected;
}

/* Consume every completed descriptor; one TAIL write for the batch. The loop
 * is what the emulator executes per packet: keep it short. */
static void consume(volatile struct minivmm_counters *c)
{
	const uint32_t n = drv.payload, mask = drv.mask, bb = drv.buffer_bytes;
	const uint32_t want = (uint32_t)sizeof(struct ka_nic_packet_hdr) + n + (KA_NIC_DESC_DD << 16);
	const int fast = drv.mode == MINIVMM_VERIFY_TABLES;
	const uint8_t *const tables = drv.tables;
	struct ka_nic_rx_desc *const ring = drv.ring;
	uint32_t next = (uint32_t)c->ring_next;
	uint64_t expected = c->expected_seq, last = c->last_seq, received = 0;
	const uint8_t *buf = drv.buffers + (uint64_t)next * bb;
	for (;;) {
		volatile uint64_t *wb = (volatile uint64_t *)(void *)&ring[next].length;
		const uint64_t w = *wb; /* length | status << 16 */
		if (!(w & ((uint64_t)KA_NIC_DESC_DD << 16)))
			break;
		uint64_t seq, lc;
		__builtin_memcpy(&seq, buf, 8);
		__builtin_memcpy(&lc, buf + 8, 8); /* payload_len | checksum << 32 */
		if (__builtin_expect(fast && (uint32_t)w == want && (uint32_t)lc == n && seq == expected &&
					     mv_verify_tables(tables, n, seq, (uint32_t)(lc >> 32), buf + 16),
				     1))
			expected = seq + 1;
		else
			expected = slow_packet(c, w, buf, expected);
		last = seq;
		*wb = 0;
		received++;
		next = (next + 1) & mask;
		buf = next ? buf + bb : drv.buffers;
	}
	if (received == 0) {
		c->empty_interrupts = c->empty_interrupts + 1;
		return;
	}
	nic_write(KA_NIC_RX_TAIL, (next - 1) & mask);
	c->ring_next = next;
	c->expected_seq = expected;
	c->last_seq = last;
	c->received = c->received + received;
	c->batches = c->batches + 1;
}

static void nic_interrupt(void)
{
	volatile struct minivmm_counters *c = drv.c;
	const uint64_t now = rdtsc();
	const uint64_t nth = c->interrupts + 1;
	c->irq_tsc_log[nth % MINIVMM_IRQ_LOG] = now; /* before the count: readers trust the log up to it */
	c->interrupts = nth;
	const uint64_t epoch = *drv.gap_epoch;
	if (epoch != c->gap_epoch_seen) {
		c->gap_epoch_seen = epoch;
		c->max_irq_gap_tsc = 0;
		c->max_gap_end_tsc = 0;
	} else if (c->tsc_last_irq != 0 && now - c->tsc_last_irq > c->max_irq_gap_tsc) {
		c->max_irq_gap_tsc = now - c->tsc_last_irq;
		c->max_gap_end_tsc = now;
	}
	c->tsc_prev_irq = c->tsc_last_irq;
	c->tsc_last_irq = now;
	consume(c);
	c->busy_tsc = c->busy_tsc + (rdtsc() - now);
	lapic_write(LAPIC_EOI, 0);
}

void isr_dispatch(struct isr_frame *f)
{
	if (f->vector == MINIVMM_NIC_VECTOR) {
		nic_interrupt();
		return;
	}
	if (f->vector == MINIVMM_SPURIOUS_VECTOR) {
		drv.c->spurious = drv.c->spurious + 1; /* no EOI for the spurious vector */
		return;
	}
	fault(f);
}

static int boot_info_valid(const struct minivmm_boot_info *b)
{
	const uint32_t e = b->ring_entries, n = b->payload_bytes;
	return b->magic == MINIVMM_BOOT_MAGIC && b->version == MINIVMM_VERSION && b->size == sizeof *b &&
	       e >= 2 && e <= 65536 && (e & (e - 1)) == 0 && n >= 8 && n <= 1024 && n % 8 == 0 &&
	       b->buffer_bytes >= sizeof(struct ka_nic_packet_hdr) + n && b->buffer_bytes % 8 == 0 &&
	       b->irq_mod_pkts >= 1 && b->verify_mode <= MINIVMM_VERIFY_REFERENCE && b->bar0_gpa != 0;
}

void guest_main(struct minivmm_boot_info *boot)
{
	volatile struct minivmm_counters *c = (volatile struct minivmm_counters *)MINIVMM_COUNTERS_GPA;
	c->state = MINIVMM_STATE_BOOTING;
	c->magic = MINIVMM_COUNTERS_MAGIC;
	c->tsc_boot = rdtsc();
	load_idt();
	puts_dbg("minivmm-guest: long mode, IDT loaded\n");
	if (!boot_info_valid(boot)) {
		c->state = MINIVMM_STATE_BAD_BOOT_INFO;
		puts_dbg("minivmm-guest: bad boot info\n");
		halt_forever();
	}
	drv.c = c;
	drv.bar0 = (volatile uint8_t *)boot->bar0_gpa;
	drv.gap_epoch = &boot->gap_epoch;
	drv.ring = (struct ka_nic_rx_desc *)boot->ring_gpa;
	drv.buffers = (const uint8_t *)boot->buffers_gpa;
	drv.tables = (const uint8_t *)boot->tables_gpa;
	drv.mask = boot->ring_entries - 1;
	drv.buffer_bytes = boot->buffer_bytes;
	drv.payload = boot->payload_bytes;
	drv.mode = boot->verify_mode;

	lapic_write(LAPIC_TPR, 0);
	lapic_write(LAPIC_SVR, LAPIC_SVR_ENABLE | MINIVMM_SPURIOUS_VECTOR);
	if ((lapic_read(LAPIC_SVR) & LAPIC_SVR_ENABLE) == 0) {
		puts_dbg("minivmm-guest: APIC did not enable\n");
		halt_forever();
	}

	/* Emulation speed: a loop of known length against the TSC, best of 5
	 * (the vCPU thread may be preempted on a busy host). */
	const uint64_t iters = 10000;
	uint64_t best = ~0ull;
	for (int run = 0; run < 5; run++) {
		const uint64_t t0 = rdtsc();
		calib_loop(iters);
		const uint64_t dt = rdtsc() - t0;
		best = dt < best ? dt : best;
	}
	c->calib_tsc = best;
	c->calib_instructions = 2 * iters + 1;

	if (drv.mode == MINIVMM_VERIFY_TABLES)
		mv_tables_build((uint8_t *)boot->tables_gpa, drv.payload);

	for (uint32_t i = 0; i <= drv.mask; i++) {
		drv.ring[i].buffer = boot->buffers_gpa + (uint64_t)i * drv.buffer_bytes;
		drv.ring[i].length = 0;
		drv.ring[i].status = 0;
		drv.ring[i].reserved = 0;
	}
	c->ring_next = 0;
	nic_write(KA_NIC_CTRL, 0);
	nic_write(KA_NIC_RX_RING_BASE, boot->ring_gpa);
	nic_write(KA_NIC_RX_RING_SIZE, boot->ring_entries);
	nic_write(KA_NIC_PAYLOAD_LEN, drv.payload);
	nic_write(KA_NIC_IRQ_MOD_PKTS, boot->irq_mod_pkts);
	nic_write(KA_NIC_IRQ_MOD_USEC, boot->irq_mod_usec);
	nic_write(KA_NIC_RX_TAIL, drv.mask);
	/* The first packet the enabled device can deliver carries NEXT_SEQ. */
	c->expected_seq = nic_read(KA_NIC_NEXT_SEQ);
	nic_write(KA_NIC_CTRL, KA_NIC_CTRL_ENABLE);
	c->state = MINIVMM_STATE_RUNNING;
	puts_dbg("minivmm-guest: NIC enabled\n");

	for (;;) {
		c->heartbeat = c->heartbeat + 1;
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	}
}
