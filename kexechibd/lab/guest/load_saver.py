"""Kernel A of the lab bench with kexechibd's loader (bench/lab_kexec.py).

Loads kernel B exactly as the daemon's Hibernate does (the configured window,
B's kernel and initrd, our purgatory; `load_saver` with `staged` from the
probe, as the engine calls it: KS_start, /proc/kexec_pgmap, KS_final on a
kernel with the staged-load patches such as the lab's, one KS_full call on one
without, DESIGN §1.1), then jumps to B and back ROUNDS times with
``reboot(LINUX_REBOOT_CMD_KEXEC)``, and unloads. Marker lines time each step
on the host's clock; no time is measured here (A's clocks stop while B runs).

    python3 load_saver.py [--config FILE] [--rounds N] B_CMDLINE
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path


def say(text: str) -> None:
    print(f"KEXECHIB-LAB {text}", flush=True)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("cmdline", help="extra arguments for B's command line")
    args = parser.parse_args(argv)

    from kexechibd import config as config_module
    from kexechibd.cycle import kexec_ops
    from kexechibd.cycle.params import SaveParams
    from kexechibd.cycle.prepare import SaverFiles, load_saver, plan_saver_load
    from kexechibd.cycle.window import choose_window
    from kexechibd.kernel.linux import LinuxKernel
    from kexechibd.purgatory import default_purgatory_path

    say("ours-imported")
    config = config_module.load(args.config)
    kernel = LinuxKernel()
    saver = config.saver
    memory_map = kernel.memory_map()
    window = choose_window(
        saver.window.start, saver.window.size, memory_map, low_memory=saver.low_memory
    )
    files = SaverFiles(
        kernel=saver.kernel.read_bytes(),
        initrd=saver.initrd.read_bytes(),
        extra_cmdline=args.cmdline,
    )
    plan = plan_saver_load(
        files,
        window,
        memory_map,
        vmcoreinfo=kernel.vmcoreinfo(),
        purgatory=default_purgatory_path().read_bytes(),
    )
    params = SaveParams(
        hibernate_id=uuid.uuid4().hex,
        mode="checkpoint",
        image_location=str(config.image.location),
        compression=config.image.compression,
        level=config.image.level,
        chunk_size=config.image.chunk_size,
        origin=kernel.identity(),
        created=time.time(),
        window=window.spans,
        vmcoreinfo=kernel.vmcoreinfo(),
    )
    say(f"ours-planned segments={len(plan.segments)}")
    staged = kernel.probe().staged_load
    load_saver(kernel, plan, params, staged=staged)
    say(f"ours-loaded staged={int(staged)}")
    for round_ in range(1, args.rounds + 1):
        say(f"ours-jump round={round_}")
        kernel.reboot_kexec()
        say(f"ours-back round={round_}")
    kexec_ops.unload(kernel)
    say("ours-unloaded")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
