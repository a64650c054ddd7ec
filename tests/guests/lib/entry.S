/*
 * Entry stub for probe guests: PVH ELF note, 32-bit entry, GDT, exception stubs.
 *
 * PVH boot protocol: 32-bit protected mode, paging off, flat segments,
 * %ebx = physical address of struct hvm_start_info, interrupts off.
 */
#define STACK_SIZE 16384

	.section .note.Xen, "a"
	.balign 4
	.long 4                 /* n_namesz: "Xen\0" */
	.long 4                 /* n_descsz */
	.long 18                /* n_type: XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.balign 4
	.long _start            /* 32-bit physical entry address */
	.balign 4

	.section .text.entry, "ax"
	.code32
	.globl _start
	.type _start, @function
_start:
	cli
	cld
	/* Our own GDT: the boot one lives in low memory we do not own. */
	lgdt gdt_desc
	ljmp $0x08, $1f
1:	movl $0x10, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs
	movl $(boot_stack + STACK_SIZE), %esp
	movl %ebx, %esi                 /* keep %ebx (hvm_start_info) */
	rdtsc
	movl %eax, entry_tsc
	movl %edx, entry_tsc + 4
	/* Zero .bss (a loader need not clear p_memsz beyond p_filesz). */
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	shrl $2, %ecx
	xorl %eax, %eax
	rep stosl
	pushl %esi
	call lib_entry                  /* never returns */
2:	cli
	hlt
	jmp 2b
	.size _start, . - _start

/* ---- exception stubs: vectors 0..31 -> exception_common -> exception_handler(frame) ---- */
.macro EXC_NOERR n
	.balign 8
exc_\n:
	pushl $0
	pushl $\n
	jmp exception_common
.endm
.macro EXC_ERR n
	.balign 8
exc_\n:
	pushl $\n
	jmp exception_common
.endm

	.text
	EXC_NOERR 0
	EXC_NOERR 1
	EXC_NOERR 2
	EXC_NOERR 3
	EXC_NOERR 4
	EXC_NOERR 5
	EXC_NOERR 6
	EXC_NOERR 7
	EXC_ERR   8
	EXC_NOERR 9
	EXC_ERR   10
	EXC_ERR   11
	EXC_ERR   12
	EXC_ERR   13
	EXC_ERR   14
	EXC_NOERR 15
	EXC_NOERR 16
	EXC_ERR   17
	EXC_NOERR 18
	EXC_NOERR 19
	EXC_NOERR 20
	EXC_ERR   21
	EXC_NOERR 22
	EXC_NOERR 23
	EXC_NOERR 24
	EXC_NOERR 25
	EXC_NOERR 26
	EXC_NOERR 27
	EXC_NOERR 28
	EXC_ERR   29
	EXC_ERR   30
	EXC_NOERR 31

exception_common:
	pushal
	movl %esp, %eax
	pushl %eax                      /* struct exc_frame * */
	call exception_handler          /* never returns */
3:	cli
	hlt
	jmp 3b

	.section .rodata
	.balign 4
	.globl exc_stub_table
exc_stub_table:
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.long exc_\n
	.endr

/* ---- GDT: 0x08 flat 32-bit code, 0x10 flat data (also used by the SMP trampoline) ---- */
	.data
	.balign 16
	.globl gdt
gdt:
	.quad 0
	.quad 0x00cf9a000000ffff        /* 0x08: code, base 0, limit 4 GiB, 32-bit */
	.quad 0x00cf92000000ffff        /* 0x10: data, base 0, limit 4 GiB */
gdt_end:
	.balign 4
	.word 0
	.globl gdt_desc
gdt_desc:
	.word gdt_end - gdt - 1
	.long gdt

	.globl entry_tsc
	.balign 8
entry_tsc:
	.quad 0

	.bss
	.balign 16
boot_stack:
	.skip STACK_SIZE

	.section .note.GNU-stack, "", @progbits
