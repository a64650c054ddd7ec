/*
 * The hostile probe's second CPU. The BSP copies [hostile_tramp_start, hostile_tramp_end) to 0x10000
 * and sends SIPI vector 0x10; the AP switches to protected mode without touching MMIO (real-mode
 * MMIO fails on PVM hosts), takes its own stack and runs hostile_ap_main() (hostile_smp.c), which
 * attacks the devices while the BSP uses them.
 */
	.text
	.code16
	.globl hostile_tramp_start, hostile_tramp_end
hostile_tramp_start:
	cli
	cld
	movw %cs, %ax
	movw %ax, %ds
	lgdtl (hostile_tramp_gdt_desc - hostile_tramp_start)
	movl %cr0, %eax
	orl $1, %eax                    /* PE */
	movl %eax, %cr0
	ljmpl $0x08, $hostile_ap_entry32 /* absolute: the probe image is linked at 1 MiB */

	.balign 4
	.word 0
hostile_tramp_gdt_desc:
	.word 23                        /* the library's GDT (lib/entry.S) */
	.long gdt
hostile_tramp_end:

	.code32
hostile_ap_entry32:
	movl $0x10, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs
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
