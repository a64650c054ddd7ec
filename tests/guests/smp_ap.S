/*
 * The SMP probe's APs, after lib/ap_trampoline.S has put them in protected mode: each counts
 * itself in with locked integer instructions (no stack, no MMIO) and halts forever.
 */

	.text
	.code32
	.globl ap_entry32
ap_entry32:
	movl $1, %eax
	cpuid
	shrl $24, %ebx                  /* initial APIC ID, 0..255 */
	lock incl smp_checkin(,%ebx,4)
	movl $1, %eax
	lock xaddl %eax, smp_ap_count   /* eax = arrival order */
	cmpl $256, %eax
	jae 1f
	movl %ebx, smp_order(,%eax,4)
1:	cli
	hlt
	jmp 1b

	.section .note.GNU-stack, "", @progbits
