/* The purgatory's interface with its loader (kexechibd/purgatory.py).
 *
 * The loader finds every variable below by symbol name in purgatory.ro and
 * checks its size against st_size, so a change here that the loader does not
 * know about is refused at load time instead of silently misread.  This
 * header is shared by the C and the assembly sources.
 */
#ifndef PURGATORY_H
#define PURGATORY_H

/* Selectors of the GDT purgatory installs.  The Linux x86-64 boot protocol
 * (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol") wants the kernel
 * entered with CS = __BOOT_CS (0x10) and DS/ES/SS = __BOOT_DS (0x18), both
 * flat, so purgatory uses the same numbers for its own code. */
#define BOOT_CS 0x10
#define BOOT_DS 0x18

/* Regions whose SHA-256 purgatory verifies. */
#define SHA256_REGIONS 16

/* Offsets into entry64_regs: the registers the kernel is entered with. */
#define REG_RAX 0
#define REG_RBX 8
#define REG_RCX 16
#define REG_RDX 24
#define REG_RSI 32
#define REG_RDI 40
#define REG_RSP 48
#define REG_RBP 56
#define REG_R8 64
#define REG_R9 72
#define REG_R10 80
#define REG_R11 88
#define REG_R12 96
#define REG_R13 104
#define REG_R14 112
#define REG_R15 120
#define REG_RIP 128
#define ENTRY64_REGS_SIZE 136

/* Purgatory's own stack (also B's stack when the loader gives rsp = 0). */
#define STACK_SIZE 8192

#ifndef __ASSEMBLER__
#include <stdint.h>

struct sha256_region {
	uint64_t start; /* physical address */
	uint64_t len;   /* bytes; 0 = unused slot */
};

/* Set by the loader. */
extern struct sha256_region sha256_regions[SHA256_REGIONS];
extern uint8_t sha256_digest[32];
extern uint64_t entry64_regs[ENTRY64_REGS_SIZE / 8];
extern uint64_t cmdline_end;  /* physical address of the command line's NUL */
extern uint64_t cmdline_room; /* bytes writable from cmdline_end on, final NUL included */

/* Set by purgatory itself: the return address its caller left at 0(%rsp). */
extern uint64_t jump_back_entry;

void purgatory_main(void);

_Static_assert(sizeof(struct sha256_region) == 16, "region layout is the loader's");
#endif

#endif
