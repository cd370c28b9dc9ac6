"""``python -m kexechibd.model``: create and operate a model machine — the
firmware's and the power button's part; kernels are driven by the daemon.

  create DIR [--ram 512M]     a powered-off machine
  power-on DIR [--cmdline S]  firmware boot of a fresh kernel (A, or C)
  power-off DIR               pull the plug: memory is scrambled
  status DIR                  power, running kernel, kernels and their state
  populate DIR --pages N      give the running kernel a realistic workload
  digest DIR                  SHA-256 of the running kernel's RAM (minus its kexec image)
  make-bzimage FILE           write a bzImage the model boots (kernel B for the model)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from kexechibd import cmdline
from kexechibd.model.bzimage import make_bzimage
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine
from kexechibd.model.workload import count_runs, in_use_digest, populate


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kexechibd.model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a powered-off machine")
    create.add_argument("dir", type=Path)
    create.add_argument("--ram", default="512M", help="RAM size (default 512M)")
    on = sub.add_parser("power-on", help="boot a fresh kernel")
    on.add_argument("dir", type=Path)
    on.add_argument("--cmdline", default="", help="the fresh kernel's command line")
    for name in ("power-off", "status", "digest"):
        sub.add_parser(name).add_argument("dir", type=Path)
    pop = sub.add_parser("populate", help="fill memory like a running system")
    pop.add_argument("dir", type=Path)
    pop.add_argument("--pages", type=int, default=20_000)
    pop.add_argument("--seed", type=int, default=0)
    bz = sub.add_parser("make-bzimage", help="write a bzImage for the model")
    bz.add_argument("file", type=Path)
    args = parser.parse_args(argv)

    if args.command == "create":
        Machine.create(args.dir, ram=cmdline.parse_size(args.ram)).close()
        print(f"created a {args.ram} machine in {args.dir} (powered off)")
        return 0
    if args.command == "make-bzimage":
        args.file.write_bytes(make_bzimage(kernel_size=256 << 10, init_size=2 << 20))
        return 0
    with Machine(args.dir) as machine:
        if args.command == "power-on":
            kid = machine.power_on(args.cmdline)
            print(f"kernel {kid} booted")
        elif args.command == "power-off":
            machine.power_off()
            print("powered off")
        elif args.command == "status":
            state = machine.state
            summary = {
                "power": state["power"],
                "running": state["running"],
                "crash": state["crash"],
                "kernels": {k: v["status"] for k, v in state["kernels"].items()},
            }
            print(json.dumps(summary, indent=1))
        elif args.command == "populate":
            with ModelKernel(machine) as kernel:
                work = populate(kernel, pages=args.pages, seed=args.seed)
                print(f"{len(work.pages)} pages in {count_runs(work.pages)} runs: {work.kinds}")
        elif args.command == "digest":
            print(in_use_digest(machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
