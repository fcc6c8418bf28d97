/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * Posted-interrupt descriptor moves for VFIO keepalive (KVM, VT-d posting).
 *
 * While a kept-alive device has no owner, its IRTE posts into a kernel-owned
 * "kept" descriptor with SN set: every interrupt is recorded in the kept PIR
 * and nobody is notified. When the next owner's irqfd connects, the IRTE is
 * pointed at the new vCPU's descriptor and the kept PIR is drained into it.
 *
 * Shared byte for byte by KVM (arch/x86/kvm/vmx/) and the keepalive
 * repository (kernel/linux/kvm/), whose user-space test includes this header
 * after shims of what it uses (outside __KERNEL__ nothing is included):
 * struct pi_desc (pir[], control), u64, POSTED_INTR_ON/SN, NR_PIR_WORDS,
 * BITS_PER_LONG, READ_ONCE, WRITE_ONCE, xchg, __ffs, set_bit, clear_bit,
 * test_bit, test_and_set_bit, test_and_clear_bit and smp_mb__after_atomic.
 */
#ifndef __KVM_X86_VMX_KEEPALIVE_PI_H
#define __KVM_X86_VMX_KEEPALIVE_PI_H

#ifdef __KERNEL__
#include <linux/bitops.h>
#include <linux/types.h>
#include <asm/posted_intr.h>
#endif

/* Vectors moved by keepalive_pi_drain() and whether the target needs an IPI */
struct keepalive_pi_drained {
	unsigned long pir[NR_PIR_WORDS];
	bool notify;
};

static inline unsigned long *keepalive_pi_control(struct pi_desc *pi)
{
	return (unsigned long *)&pi->control;
}

/*
 * Set up @kept before an IRTE points at it: PIR empty, ON clear, SN set, NV
 * and NDST copied from @from. With SN set and the IRTE not urgent, the
 * IOMMU only records interrupts in PIR and never sends a notification.
 */
static inline void keepalive_pi_init_kept(struct pi_desc *kept,
					  struct pi_desc *from)
{
	u64 control = READ_ONCE(from->control);
	int i;

	for (i = 0; i < NR_PIR_WORDS; i++)
		WRITE_ONCE(kept->pir[i], 0);
	control &= ~((u64)1 << POSTED_INTR_ON);
	control |= (u64)1 << POSTED_INTR_SN;
	WRITE_ONCE(kept->control, control);
}

/*
 * After the IRTE posts into @kept (and the interrupt entry cache is flushed):
 * copy @vector's pending bit from @from, the descriptor it posted into so
 * far. Copied, not taken: @from may belong to a vCPU that still runs and
 * then sees the interrupt too; a duplicate edge interrupt is harmless, a
 * lost one is not. Returns true if @vector was pending in @from.
 */
static inline bool keepalive_pi_park_vector(struct pi_desc *kept,
					    struct pi_desc *from,
					    unsigned int vector)
{
	if (vector >= NR_PIR_WORDS * BITS_PER_LONG ||
	    !test_bit(vector, from->pir))
		return false;
	set_bit(vector, kept->pir);
	return true;
}

/*
 * Take everything pending in @kept into @pir. ON is cleared before PIR is
 * read, as vmx_sync_pir_to_irr() does: a post landing after its word was
 * taken finds ON clear and sets it again (SN clear) or stays in PIR, so it is
 * seen by the next take. Returns true if any vector was pending.
 */
static inline bool keepalive_pi_take(struct pi_desc *kept,
				     unsigned long pir[NR_PIR_WORDS])
{
	unsigned long any = 0;
	int i;

	clear_bit(POSTED_INTR_ON, keepalive_pi_control(kept));
	/* ON is clear before any PIR word is read */
	smp_mb__after_atomic();
	for (i = 0; i < NR_PIR_WORDS; i++) {
		pir[i] = READ_ONCE(kept->pir[i]) ? xchg(&kept->pir[i], 0) : 0;
		any |= pir[i];
	}
	return any != 0;
}

/*
 * The next owner posts the device's interrupt as @to instead of @from: move
 * the kept bit (the IRTE no longer posts into @kept). True if it was set.
 */
static inline bool keepalive_pi_retag(struct pi_desc *kept, unsigned int from,
				      unsigned int to)
{
	if (from == to || from >= NR_PIR_WORDS * BITS_PER_LONG ||
	    to >= NR_PIR_WORDS * BITS_PER_LONG ||
	    !test_and_clear_bit(from, kept->pir))
		return false;
	set_bit(to, kept->pir);
	return true;
}

/*
 * Move every vector pending in @kept into @target, once, as the IOMMU would
 * post them: PIR bits first, then, unless SN is set, ON; a notification is
 * due if this drain set ON. With SN set nothing else is done: the vCPU is
 * not running and vmx_vcpu_pi_load() clears SN, then sets ON if PIR is not
 * empty. Returns true if anything was moved; @out holds what and whether
 * the caller must notify the target (kick its vCPU).
 */
static inline bool keepalive_pi_drain(struct pi_desc *kept,
				      struct pi_desc *target,
				      struct keepalive_pi_drained *out)
{
	unsigned long word;
	int i;

	out->notify = false;
	if (!keepalive_pi_take(kept, out->pir))
		return false;
	for (i = 0; i < NR_PIR_WORDS; i++) {
		for (word = out->pir[i]; word; word &= word - 1)
			set_bit(i * BITS_PER_LONG + __ffs(word), target->pir);
	}
	/* PIR before SN and ON, as the IOMMU orders them (VT-d 5.2.3) */
	smp_mb__after_atomic();
	if (!test_bit(POSTED_INTR_SN, keepalive_pi_control(target)))
		out->notify = !test_and_set_bit(POSTED_INTR_ON,
						keepalive_pi_control(target));
	return true;
}

#endif /* __KVM_X86_VMX_KEEPALIVE_PI_H */
