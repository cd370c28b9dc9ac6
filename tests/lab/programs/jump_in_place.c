// SPDX-License-Identifier: GPL-2.0
/*
 * jump_in_place: kexec jump round trips into an image loaded in place, for
 * tests/lab/test_relocation.py.  Runs only inside a lab guest (it refuses
 * unless the kernel command line has kexechib.enable_kexec=1).
 *
 *   jump_in_place START MID FINAL BASE MIB...
 *
 * START, MID and FINAL are the kexec_load flags of the three stages with
 * KEXEC_PRESERVE_CONTEXT (the test passes them from kexechibd.kernel.abi,
 * their one home).  For each MIB it stages an image whose entry page at
 * BASE holds a single `ret` (relocate_kernel called it, so the jump comes
 * straight back and the pages are swapped back), followed by MIB MiB of
 * data, and jumps.  A 32 MiB buffer of its own must survive every jump.
 * Prints "KEXECHIB-LAB jump mib=M err=E" per jump and "KEXECHIB-LAB
 * relocation jumps=N failed=F intact=I" at the end.
 */
#include <errno.h>
#include <linux/kexec.h>
#include <linux/reboot.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MIB (1024UL * 1024)
#define PAGE 4096UL
#define OWN (32 * MIB)

static int kload(unsigned long entry, unsigned long nr,
		 struct kexec_segment *segments, unsigned long flags)
{
	return syscall(__NR_kexec_load, entry, nr, segments, flags) ? errno : 0;
}

static uint64_t digest(const unsigned char *buf, size_t len)
{
	uint64_t h = 1469598103934665603ULL;	/* FNV-1a */
	size_t i;

	for (i = 0; i < len; i++)
		h = (h ^ buf[i]) * 1099511628211ULL;
	return h;
}

static int lab_guest(void)
{
	char line[4096] = "";
	FILE *f = fopen("/proc/cmdline", "r");

	if (!f || !fgets(line, sizeof(line), f))
		return 0;
	fclose(f);
	return strstr(line, "kexechib.enable_kexec=1") != NULL;
}

/* The image: the `ret` page at base, then mib MiB of data; 0 or errno */
static int stage(unsigned long flags[3], unsigned long base, unsigned long mib,
		 const unsigned char *data)
{
	static const unsigned char ret = 0xc3;
	struct kexec_segment s = { .buf = &ret, .bufsz = 1,
				   .mem = (void *)base, .memsz = PAGE };
	unsigned long done;
	int err;

	err = kload(0, 1, &s, flags[0]);
	for (done = 0; !err && done < mib; done += 16) {
		unsigned long n = mib - done < 16 ? mib - done : 16;

		s.buf = data;
		s.bufsz = n * MIB;
		s.mem = (void *)(base + PAGE + done * MIB);
		s.memsz = n * MIB;
		err = kload(0, 1, &s, flags[1]);
	}
	return err ? err : kload(base, 0, NULL, flags[2]);
}

int main(int argc, char **argv)
{
	unsigned long flags[3], base;
	unsigned char *own, *data;
	int i, jumps = 0, failed = 0;
	uint64_t before;

	if (argc < 6) {
		fprintf(stderr, "usage: %s START MID FINAL BASE MIB...\n", argv[0]);
		return 2;
	}
	if (!lab_guest()) {
		fprintf(stderr, "not a lab guest: refusing to kexec\n");
		return 3;
	}
	for (i = 0; i < 3; i++)
		flags[i] = strtoul(argv[i + 1], NULL, 0);
	base = strtoul(argv[4], NULL, 0);
	own = malloc(OWN);
	data = malloc(16 * MIB);
	if (!own || !data)
		return 1;
	srandom(6);
	for (i = 0; i < (int)OWN; i++)
		own[i] = random();
	memset(data, 0x5a, 16 * MIB);
	before = digest(own, OWN);

	for (i = 5; i < argc; i++) {
		unsigned long mib = strtoul(argv[i], NULL, 0);
		int err = stage(flags, base, mib, data);

		if (!err && syscall(__NR_reboot, LINUX_REBOOT_MAGIC1,
				    LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_KEXEC,
				    NULL))
			err = errno;
		printf("KEXECHIB-LAB jump mib=%lu err=%d\n", mib, err);
		fflush(stdout);
		if (err)
			failed++;
		else
			jumps++;
	}
	kload(0, 0, NULL, 0);	/* unload */
	printf("KEXECHIB-LAB relocation jumps=%d failed=%d intact=%d\n",
	       jumps, failed, digest(own, OWN) == before);
	return 0;
}
