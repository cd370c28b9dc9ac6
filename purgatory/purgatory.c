/* The purgatory's C part: verify the next kernel, then tell it how to jump
 * back.  entry.S has already installed a GDT and our own stack and recorded
 * jump_back_entry; after we return it enters the kernel.
 *
 * Every variable the loader sets lives in .data (never .bss: the loader
 * writes them into the segment by symbol, so they must have bytes there).
 */
#include "purgatory.h"

#include "cmdline.h"
#include "sha256.h"

#define LOADER_SET __attribute__((section(".data")))

struct sha256_region sha256_regions[SHA256_REGIONS] LOADER_SET;
uint8_t sha256_digest[32] LOADER_SET;
uint64_t entry64_regs[ENTRY64_REGS_SIZE / 8] LOADER_SET;
uint64_t cmdline_end LOADER_SET;
uint64_t cmdline_room LOADER_SET;
uint64_t jump_back_entry LOADER_SET;

/* Never enter a kernel whose bytes are not the ones that were loaded.
 * Interrupts are off; spinning forever leaves the machine for the
 * watchdog or the user's power button.  A spin rather than hlt so that an
 * NMI cannot wake us into anything: there is nothing after this loop. */
static void __attribute__((noreturn)) hang(void)
{
	for (;;)
		__asm__ volatile("cli; pause" ::: "memory");
}

static int regions_match(void)
{
	struct sha256_ctx ctx;
	uint8_t digest[SHA256_DIGEST_SIZE];
	uint8_t diff = 0;
	unsigned i;

	sha256_init(&ctx);
	for (i = 0; i < SHA256_REGIONS; i++) {
		const struct sha256_region *r = &sha256_regions[i];

		/* The identity map makes a physical address a pointer. */
		if (r->len)
			sha256_update(&ctx, (const void *)(uintptr_t)r->start, r->len);
	}
	sha256_final(&ctx, digest);
	for (i = 0; i < SHA256_DIGEST_SIZE; i++)
		diff |= digest[i] ^ sha256_digest[i];
	return diff == 0;
}

void purgatory_main(void)
{
	if (!regions_match())
		hang();
	/* 0 means "no way back" (a caller that did not preserve context). */
	if (jump_back_entry && cmdline_end && cmdline_room)
		cmdline_append_jump_back((char *)(uintptr_t)cmdline_end, cmdline_room,
					 jump_back_entry);
}
