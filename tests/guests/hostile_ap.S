/*
 * The hostile probe's second CPU, after lib/ap_trampoline.S has put it in protected mode (the BSP
 * starts it from hostile_smp.c): it takes its own stack and runs hostile_ap_main(), which attacks
 * the devices while the BSP uses them.
 */
	.text
	.code32
	.globl ap_entry32
ap_entry32:
	movl $hostile_ap_stack_top, %esp
	call hostile_ap_main
1:	cli
	hlt
	jmp 1b

	.bss
	.balign 16
	.space 8192
hostile_ap_stack_top:

	.section .note.GNU-stack, "", @progbits
