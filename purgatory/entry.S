/* Purgatory entry and exit.
 *
 * The kernel's relocate_kernel `call`s purgatory_start in 64-bit mode with
 * interrupts off, paging on with an identity map, and an invalid GDT and IDT
 * (machine_kexec() invalidated them).  0(%rsp) holds the return address into
 * the caller's control page: the address the next kernel calls to jump back.
 */
#include "purgatory.h"

	.code64
	.text
	.globl	purgatory_start
	.type	purgatory_start, @function
purgatory_start:
	cli
	cld				/* the C code assumes DF = 0 */

	/* Our own GDT before touching any segment register: the caller's is gone. */
	lgdt	gdt_ptr(%rip)
	movl	$BOOT_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs

	/* The jump-back entry; read before we move %rsp away from it. */
	movq	0(%rsp), %rax
	movq	%rax, jump_back_entry(%rip)

	/* Switch to our stack now, so that nothing below writes to the
	 * caller's (its page is the caller's to keep). */
	leaq	stack_end(%rip), %rsp

	/* Reload CS from our GDT: a far return is the way in 64-bit mode. */
	leaq	1f(%rip), %rax
	pushq	$BOOT_CS
	pushq	%rax
	lretq
1:
	call	purgatory_main		/* returns only if the kernel checked out */

	/* Enter the kernel with exactly the registers the loader gave us. */
	movq	entry64_regs + REG_RAX(%rip), %rax
	movq	entry64_regs + REG_RBX(%rip), %rbx
	movq	entry64_regs + REG_RCX(%rip), %rcx
	movq	entry64_regs + REG_RDX(%rip), %rdx
	movq	entry64_regs + REG_RSI(%rip), %rsi
	movq	entry64_regs + REG_RDI(%rip), %rdi
	movq	entry64_regs + REG_RBP(%rip), %rbp
	movq	entry64_regs + REG_R8(%rip), %r8
	movq	entry64_regs + REG_R9(%rip), %r9
	movq	entry64_regs + REG_R10(%rip), %r10
	movq	entry64_regs + REG_R11(%rip), %r11
	movq	entry64_regs + REG_R12(%rip), %r12
	movq	entry64_regs + REG_R13(%rip), %r13
	movq	entry64_regs + REG_R14(%rip), %r14
	movq	entry64_regs + REG_R15(%rip), %r15
	movq	entry64_regs + REG_RSP(%rip), %rsp
	jmpq	*entry64_regs + REG_RIP(%rip)
	.size	purgatory_start, . - purgatory_start

	/* Descriptors are written with the accessed bit already set, so the
	 * CPU never needs to write to the GDT when loading a selector. */
	.data
	.balign	16
gdt:
	.quad	0			/* 0x00: null */
	.quad	0			/* 0x08: unused */
	.quad	0x00af9b000000ffff	/* 0x10 BOOT_CS: 64-bit code, DPL 0 */
	.quad	0x00cf93000000ffff	/* 0x18 BOOT_DS: flat 4 GiB data, writable */
gdt_end:
	.balign	8
gdt_ptr:
	.word	gdt_end - gdt - 1
	.quad	gdt
	.size	gdt_ptr, . - gdt_ptr

	/* The stack: NOBITS, so it costs no bytes in the segment's buffer. */
	.bss
	.balign	4096
stack:
	.skip	STACK_SIZE
	.globl	stack_end
	.type	stack_end, @object
stack_end:
	.size	stack_end, 0

	.section .note.GNU-stack, "", @progbits
