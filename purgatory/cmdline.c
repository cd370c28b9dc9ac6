/* See cmdline.h.  Freestanding: used by the purgatory and, for the tests,
 * compiled into a host library. */
#include "cmdline.h"

static const char param[] = " kexec_jump_back_entry=0x";

size_t cmdline_append_jump_back(char *end, size_t room, uint64_t entry)
{
	char text[JUMP_BACK_PARAM_MAX];
	size_t len = 0, i;
	int shift = 60;

	for (i = 0; param[i]; i++)
		text[len++] = param[i];
	while (shift > 0 && ((entry >> shift) & 0xf) == 0)
		shift -= 4; /* no leading zeros, as printf's %lx */
	for (; shift >= 0; shift -= 4)
		text[len++] = "0123456789abcdef"[(entry >> shift) & 0xf];
	text[len] = '\0';

	if (len + 1 > room)
		return 0;
	for (i = 0; i <= len; i++)
		end[i] = text[i];
	return len;
}
