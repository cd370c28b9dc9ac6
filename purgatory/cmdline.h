/* Appending kexec_jump_back_entry= to the next kernel's command line. */
#ifndef PURGATORY_CMDLINE_H
#define PURGATORY_CMDLINE_H

#include <stddef.h>
#include <stdint.h>

/* The longest text cmdline_append_jump_back() writes, final NUL included:
 * " kexec_jump_back_entry=0x" (25) + 16 hex digits + NUL. */
#define JUMP_BACK_PARAM_MAX 42

/* Write " kexec_jump_back_entry=0x<entry in lowercase hex>" and a NUL at `end`
 * (where the command line's NUL is), using at most `room` bytes.  If the text
 * and its NUL do not fit, write nothing: a truncated address would send the
 * next kernel somewhere wrong, a missing one only disables jumping back.
 * Writing at the fixed `end` (never after the current NUL) makes a repeated
 * call replace the parameter rather than add a second one.
 * Returns the number of characters written, NUL excluded; 0 if none. */
size_t cmdline_append_jump_back(char *end, size_t room, uint64_t entry);

#endif
