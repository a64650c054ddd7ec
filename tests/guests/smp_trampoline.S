/*
 * AP start-up. The BSP copies [smp_tramp_start, smp_tramp_end) to 0x10000 and
 * sends SIPI vector 0x10, so an AP starts here in real mode at CS:IP = 1000:0000.
 *
 * Real mode touches no MMIO (it fails on PVM hosts): it only loads the GDT and
 * switches to protected mode, then jumps into the probe image at 1 MiB, where
 * the AP counts itself in with locked integer instructions and halts forever.
 */

	.text
	.code16
	.globl smp_tramp_start, smp_tramp_end
smp_tramp_start:
	cli
	cld
	movw %cs, %ax
	movw %ax, %ds
	lgdtl (tramp_gdt_desc - smp_tramp_start)
	movl %cr0, %eax
	orl $1, %eax                    /* PE */
	movl %eax, %cr0
	ljmpl $0x08, $ap_entry32        /* absolute: the probe image is linked at 1 MiB */

	.balign 4
	.word 0
tramp_gdt_desc:
	.word 23                        /* 3 descriptors, same layout as lib/entry.S */
	.long gdt                       /* 32-bit linear base (lgdtl) */
smp_tramp_end:

	.code32
	.globl ap_entry32
ap_entry32:
	movl $0x10, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs
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
