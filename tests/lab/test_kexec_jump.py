"""The lab kernel does kexec jump round trips with the reference tool, kexec-tools.

A (the lab kernel, booted by QEMU) loads B (the same bzImage) with
`kexec --load-preserve-context`, confined to [1 MiB, MEM_MAX] by
`--pass-memmap-cmdline` (memmap=exactmap) and `nokaslr`, and jumps. B prints a
marker, loads a jump-back helper with the entry purgatory appended to its
command line, and jumps back. A checks that its tmpfs data survived, then jumps
again: the loaded image's entry is now B's re-entry point, so B continues
after its own `kexec -e`, and jumps back once more. A -> B -> A -> B -> A.

Both kexec-jump fixes are needed: without the GDT restore (upstream, in 6.12.y;
the 6.1 lab carried it as a patch) the first return to A triple-faults; without
mapping the entry page (kernel/patches 0001) B's jump back does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kexechibd.lab import GuestSpec, run_guest
from kexechibd.lab.initramfs import RAM_ROOT, build_initramfs, kexec_path

pytestmark = pytest.mark.lab

MEMORY_MIB = 512
# B's window: kexec-tools gives a preserve-context kernel [first RAM above
# 640 KiB, --mem-max] plus the low 640 KiB, whatever --mem-min says; the backup
# segments cover [--mem-min, --mem-max]. So --mem-min is 1 MiB (see docs/lab.md).
MEM_MIN = 0x100000
MEM_MAX = 0x7FFFFFF

# In B: runs from B's own initramfs (kexechib.lab.root=none), never touching 9p.
B_SCRIPT = r"""
say() { echo "KEXECHIB-LAB $*"; }
jbe=$(sed -n 's/.*kexec_jump_back_entry=\(0x[0-9a-fA-F]*\).*/\1/p' /proc/cmdline)
say "b-up jbe=$jbe"
echo "B cmdline: $(cat /proc/cmdline)"
grep -i 'system ram' /proc/iomem | sed 's/^/B iomem: /'
kexec --load-jump-back-helper --entry="$jbe" || { say "b-error=helper"; exit 1; }
round=1
while [ $round -le 5 ]; do
    say "b-jump round=$round"
    kexec -e
    round=$((round + 1))
    say "b-back round=$round"
done
"""

# In A: the first lines move the script onto the RAM root's busybox shell,
# because after the jump A's 9p root is gone (see docs/lab.md); everything
# after the load uses the RAM root only.
A_SCRIPT = r"""
R=@RAM@
if [ -z "$IN_RAM" ]; then
    export IN_RAM=1
    exec $R/bin/busybox sh "$0"
fi
bb=$R/bin/busybox
say() { echo "KEXECHIB-LAB $*"; }
$bb dd if=/dev/urandom of=/tmp/canary bs=4096 count=64 2>/dev/null
want=$($bb md5sum < /tmp/canary)
echo "A cmdline: $($bb cat /proc/cmdline)"
$bb grep -iE 'system ram|reserved|rom' /proc/iomem | $bb sed 's/^/A iomem: /'
$R/sbin/kexec --load-preserve-context --mem-min=@MEM_MIN@ --mem-max=@MEM_MAX@ \
    --pass-memmap-cmdline --initrd=@B_INITRD@ \
    --append="console=ttyS0 panic=-1 nokaslr kexechib.lab.root=none kexechib.lab.run=/b.sh" \
    @KERNEL@ || { say "a-error=load"; exit 1; }
say "a-loaded"
for round in 1 2; do
    say "a-jump round=$round"
    # From the RAM root: after the first jump A's 9p root is gone.
    $bb chroot $R /sbin/kexec -e
    got=$($bb md5sum < /tmp/canary)
    if [ "$got" = "$want" ]; then canary=intact; else canary=changed; fi
    say "a-back round=$round canary=$canary"
done
"""


def _a_script(kernel: Path, b_initrd: Path) -> str:
    return (
        A_SCRIPT.replace("@RAM@", RAM_ROOT)
        .replace("@MEM_MIN@", hex(MEM_MIN))
        .replace("@MEM_MAX@", hex(MEM_MAX))
        .replace("@B_INITRD@", str(b_initrd))
        .replace("@KERNEL@", str(kernel))
    )


def test_kexec_tools_round_trip_a_b_a_b_a(lab: Path, workdir: Path) -> None:
    b_initrd = workdir / "b.cpio"
    b_initrd.write_bytes(
        build_initramfs({"sbin/kexec": kexec_path()}, {"lab/b.sh": B_SCRIPT.encode()})
    )
    result = run_guest(
        GuestSpec(command=_a_script(lab, b_initrd), memory_mib=MEMORY_MIB, name="kjump"), workdir
    )
    assert result.exit_status == 0, result.describe()
    sequence = [
        (m.kind, m.fields.get("round")) for m in result.markers if m.kind.startswith(("a-", "b-"))
    ]
    assert sequence == [
        ("a-loaded", None),
        ("a-jump", "1"),
        ("b-up", None),
        ("b-jump", "1"),
        ("a-back", "1"),
        ("a-jump", "2"),
        ("b-back", "2"),
        ("b-jump", "2"),
        ("a-back", "2"),
    ], result.describe()
    backs = [m for m in result.markers if m.kind == "a-back"]
    assert all(m.fields["canary"] == "intact" for m in backs), result.describe()
    b_up = result.marker("b-up")
    assert b_up is not None and b_up.fields["jbe"].startswith("0x")
