/*
 * AP start-up trampoline (lib/ap_start.h). The BSP copies [ap_tramp_start, ap_tramp_end) to
 * AP_TRAMPOLINE_BASE (0x10000) and sends SIPI vector 0x10, so an AP starts here in real mode at
 * CS:IP = 1000:0000.
 *
 * Real mode touches no MMIO (it fails on PVM hosts): it only loads the library's GDT and switches
 * to protected mode, then jumps into the probe image at 1 MiB, loads the flat data segments and
 * goes on at ap_entry32, which the probe defines (smp_ap.S: check in and halt; hostile_ap.S: a
 * stack and C code). ap_entry32 has no stack.
 */

	.text
	.code16
	.globl ap_tramp_start, ap_tramp_end
ap_tramp_start:
	cli
	cld
	movw %cs, %ax
	movw %ax, %ds
	lgdtl (ap_tramp_gdt_desc - ap_tramp_start)
	movl %cr0, %eax
	orl $1, %eax                    /* PE */
	movl %eax, %cr0
	ljmpl $0x08, $ap_tramp_protected /* absolute: the probe image is linked at 1 MiB */

	.balign 4
	.word 0
ap_tramp_gdt_desc:
	.word 23                        /* 3 descriptors, same layout as lib/entry.S */
	.long gdt                       /* 32-bit linear base (lgdtl) */
ap_tramp_end:

	.code32
ap_tramp_protected:
	movl $0x10, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs
	jmp ap_entry32

	.section .note.GNU-stack, "", @progbits
