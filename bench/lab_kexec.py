"""Issue 6's lab benchmark: kexechibd against kexec-tools on a real kernel.

One guest (the lab kernel, 512 MiB, one CPU, QEMU TCG) runs, in kernel A:

1. kexec-tools: `kexec --load-preserve-context` of kernel B (the lab bzImage
   and the guest userspace as its initrd), then `kexec -e` twice; B jumps
   back each time with `kexec --load-jump-back-helper` / `kexec -e`.
2. kexechibd: B loaded as the daemon's Hibernate loads it (its loader and
   purgatory, kexechibd/lab/guest/load_saver.py): the engine's `load_saver`
   with the path the probe chooses, on the lab kernel the staged one
   (KS_start with every segment, /proc/kexec_pgmap, KS_final with the
   parameters; the output says which), then `reboot(LINUX_REBOOT_CMD_KEXEC)`
   twice; B jumps back with kexechibd's jump-back helper
   (kexechibd/lab/guest/jumpback.py).

B does nothing but jump back, with the same tool as A. Both give B a window
of about 128 MiB (kexec-tools [1 MiB, 128 MiB), kexechibd 128M@256M and the
low 632 KiB). With `--daemon` a second guest times the phases of the daemon
test's checkpoint round trip over D-Bus (kexechibd/lab/guest/checkpoint.sh).

Times are the host's clock between serial-console markers: A's clocks stop
while B runs. Run: ``.venv/bin/python -m bench.lab_kexec [--daemon]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from kexechibd.lab import GuestResult, GuestSpec, lab_kernel, new_workdir, run_guest
from kexechibd.lab.userspace import GUEST_LIB, daemon_guest, lab_config, origin_initrd

# kexec-tools gives a preserve-context kernel [first RAM above 640 KiB,
# --mem-max] whatever --mem-min says (docs/lab.md), so its window starts at 1 MiB.
KEXEC_TOOLS_WINDOW = ("0x100000", "0x7ffffff")
OURS_WINDOW = "128M@256M"

A_SCRIPT = r"""
. /usr/lib/kexechib-lab/lab.sh
B="console=ttyS0 panic=-1 kexechib.lab.root=none kexechib.lab.run=/@LIB@/jumpback.sh"
cat > /run/bench.conf <<'EOF'
@CONFIG@
EOF
say "kt-start"
kexec --load-preserve-context --mem-min=@MEM_MIN@ --mem-max=@MEM_MAX@ --pass-memmap-cmdline \
	--initrd=/boot/saver.cpio --append="$B nokaslr kexechib.lab.tool=kexec-tools" /boot/bzImage ||
	{ say "error=kexec-tools-load"; exit 1; }
say "kt-loaded"
for round in 1 2; do
	say "kt-jump round=$round"
	kexec -e
	say "kt-back round=$round"
done
kexec -u
say "ours-start"
python3 /@LIB@/load_saver.py --config /run/bench.conf "$B kexechib.lab.tool=kexechibd" ||
	{ say "error=kexechibd"; exit 1; }
"""


def tools_script() -> str:
    return (
        A_SCRIPT.replace("@LIB@", GUEST_LIB)
        .replace("@CONFIG@", lab_config(window=OURS_WINDOW).strip())
        .replace("@MEM_MIN@", KEXEC_TOOLS_WINDOW[0])
        .replace("@MEM_MAX@", KEXEC_TOOLS_WINDOW[1])
    )


class Timeline:
    """Host times of markers and console lines of one guest run."""

    def __init__(self, result: GuestResult) -> None:
        self.result = result

    def marker(self, kind: str, nth: int = 0, **fields: str) -> float:
        found = [
            m
            for m in self.result.markers
            if m.kind == kind and all(m.fields.get(k) == v for k, v in fields.items())
        ]
        if len(found) <= nth:
            raise LookupError(f"no marker {kind} {fields} (#{nth}) in {self.result.workdir}")
        return found[nth].seconds

    def line(self, text: str, nth: int = 0) -> float:
        found = [line.seconds for line in self.result.lines if text in line.text]
        if len(found) <= nth:
            raise LookupError(f"no console line with {text!r} in {self.result.workdir}")
        return found[nth]


def tools_rows(t: Timeline) -> list[tuple[str, float, float]]:
    """(what, kexec-tools seconds, kexechibd seconds)."""

    def b_up(tool: str) -> float:
        return t.marker("b-up", tool=tool)

    def b_jump(tool: str) -> float:
        ups = [m for m in t.result.markers if m.kind == "b-up"]
        first = ups.index(next(m for m in ups if m.fields.get("tool") == tool))
        return t.marker("b-jump", first, round="1")

    kt_jump, ours_jump = t.marker("kt-jump", round="1"), t.marker("ours-jump", round="1")
    return [
        (
            "load B (process, from exec)",
            t.marker("kt-loaded") - t.marker("kt-start"),
            t.marker("ours-loaded") - t.marker("ours-start"),
        ),
        (
            "load B (after Python start)",
            t.marker("kt-loaded") - t.marker("kt-start"),
            t.marker("ours-loaded") - t.marker("ours-imported"),
        ),
        (
            "round trip 1: A -> B -> A",
            t.marker("kt-back", round="1") - kt_jump,
            t.marker("ours-back", round="1") - ours_jump,
        ),
        (
            "  A -> B's jump-back script",
            b_up("kexec-tools") - kt_jump,
            b_up("kexechibd") - ours_jump,
        ),
        (
            "  in B: start tool, load helper",
            b_jump("kexec-tools") - b_up("kexec-tools"),
            b_jump("kexechibd") - b_up("kexechibd"),
        ),
        (
            "  B -> A",
            t.marker("kt-back", round="1") - b_jump("kexec-tools"),
            t.marker("ours-back", round="1") - b_jump("kexechibd"),
        ),
        (
            "round trip 2: re-entry",
            t.marker("kt-back", round="2") - t.marker("kt-jump", round="2"),
            t.marker("ours-back", round="2") - t.marker("ours-jump", round="2"),
        ),
    ]


def load_path(t: Timeline) -> str:
    """How load_saver.py loaded B: the path the daemon's probe chose."""
    loaded = t.result.marker("ours-loaded")
    if loaded is None:
        raise LookupError(f"no marker ours-loaded in {t.result.workdir}")
    if loaded.fields.get("staged") == "1":
        return "staged loads (KS_start, /proc/kexec_pgmap, KS_final)"
    return "one KS_full call (no staged-load support)"


def daemon_rows(t: Timeline) -> list[tuple[str, float]]:
    hibernate = t.marker("a-hibernate")
    jumping = t.line("kexechibd: INFO: jumping to kernel B")
    b_up = t.marker("b-up")
    b_daemon = t.marker("daemon-up", 1)
    committed = t.line("kexechibd: INFO: image committed")
    back = t.marker("a-back", round="1")
    return [
        ("A: QEMU start -> /init", t.marker("init")),
        ("A: bus + kexechibd up", t.marker("daemon-up") - t.marker("run")),
        ("Hibernate(checkpoint) call", back - hibernate),
        ("  plan + load B", jumping - t.line("kexechibd: INFO: hibernate started")),
        ("  A -> B's /init script", b_up - jumping),
        ("  B: bus + kexechibd up", b_daemon - b_up),
        ("  B: save A", committed - b_daemon),
        ("  B -> A, until the call returns", back - committed),
        ("JumpBack round trip 2", t.marker("a-back", round="2") - t.marker("a-jump", round="2")),
        ("JumpBack round trip 3", t.marker("a-back", round="3") - t.marker("a-jump", round="3")),
        ("whole guest", t.result.wall_seconds),
    ]


def run_tools(kernel: Path) -> GuestResult:
    spec = GuestSpec(
        command=tools_script(),
        kernel=kernel,
        initrd=origin_initrd(kernel),
        append="kexechib.lab.root=none kexechib.enable_kexec=1",
        timeout=600,
        name="bench",
    )
    return run_guest(spec, new_workdir("bench"))


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--daemon", action="store_true", help="also time the daemon round trip")
    args = parser.parse_args(argv)

    result = run_tools(lab_kernel())
    if result.exit_status != 0:
        print(result.describe(), file=sys.stderr)
        return 1
    timeline = Timeline(result)
    print("kexec jump on the lab kernel (QEMU TCG, 512 MiB, 1 CPU), host seconds")
    print(f"kexechibd loads B as its daemon does on this kernel: {load_path(timeline)}")
    print(f"{'':34} {'kexec-tools':>11} {'kexechibd':>10} {'ratio':>6}")
    for what, theirs, ours in tools_rows(timeline):
        print(f"{what:34} {theirs:11.2f} {ours:10.2f} {ours / theirs:6.2f}")
    shutil.rmtree(result.workdir, ignore_errors=True)

    if args.daemon:
        workdir = new_workdir("bench-daemon")
        daemon = run_guest(daemon_guest(lab_kernel(), workdir), workdir)
        if daemon.exit_status != 0:
            print(daemon.describe(), file=sys.stderr)
            return 1
        print()
        print("kexechibd over D-Bus (tests/lab/test_daemon.py's guest), host seconds")
        for what, seconds in daemon_rows(Timeline(daemon)):
            print(f"{what:34} {seconds:11.2f}")
        peak = daemon.marker("b-saved")
        if peak is not None:
            print(f"{'B: daemon peak RSS (VmHWM)':34} {peak.fields['daemon_peak_kib']:>8} KiB")
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
