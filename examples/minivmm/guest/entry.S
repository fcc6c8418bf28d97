/* Entry, interrupt stubs and the calibration loop of the minivmm guest. */
#define STACK_TOP 0x80000

	.code64
	.section .text.entry, "ax"
	.global _start
_start:
	mov	$STACK_TOP, %rsp	/* the VMM also sets RSP; RDI = boot info */
	xor	%ebp, %ebp
	call	guest_main
1:	cli
	hlt
	jmp	1b

	.text
/* 256 stubs of 16 bytes: isr_stubs + 16 * vector. Each pushes an error code
 * (0 where the CPU pushes none) and the vector, then joins isr_common. */
	.global isr_stubs
	.balign 16
isr_stubs:
	.set vec, 0
	.rept 256
	.balign 16
	.if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	pushq	$vec
	.else
	pushq	$0
	pushq	$vec
	.endif
	jmp	isr_common
	.set vec, vec + 1
	.endr

/* Frame for isr_dispatch (struct isr_frame): r11..rax, vector, error, then
 * the CPU's rip, cs, rflags, rsp, ss. RSP is 16-byte aligned here. */
isr_common:
	push	%rax
	push	%rcx
	push	%rdx
	push	%rsi
	push	%rdi
	push	%r8
	push	%r9
	push	%r10
	push	%r11
	mov	%rsp, %rdi
	cld
	call	isr_dispatch
	pop	%r11
	pop	%r10
	pop	%r9
	pop	%r8
	pop	%rdi
	pop	%rsi
	pop	%rdx
	pop	%rcx
	pop	%rax
	add	$16, %rsp
	iretq

/* void calib_loop(uint64_t n): exactly 2 * n + 1 instructions (n >= 1). */
	.global calib_loop
calib_loop:
1:	dec	%rdi
	jnz	1b
	ret

	.section .note.GNU-stack, "", @progbits
