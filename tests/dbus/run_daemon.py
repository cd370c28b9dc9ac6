"""Runs kexechibd's real ``main()`` — arguments, configuration, logging,
signals, sd_notify, the bus — with the ScriptedEngine (a test double) in
place of the engine.  Options before ``--`` script the double; the rest go
to kexechibd.  The double's image location is the configuration's."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kexechibd.config import Config
from kexechibd.daemon import main as daemon_main
from kexechibd.daemon.main import Runtime, main
from tests.dbus.scripted_engine import ScriptedEngine


def run(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser()
    parser.add_argument("--hold", action="store_true", help="operations wait until cancelled")
    parser.add_argument("--cmdline", default="ro quiet")
    parser.add_argument("--boot-id", default="boot-of-this-test")
    parser.add_argument("--initramfs-ran", type=Path, help="in place of /run/kexechib/…")
    script = parser.parse_args(argv[:split])
    if script.initramfs_ran:
        daemon_main.INITRAMFS_RAN = script.initramfs_ran

    def runtime(config: Config) -> Runtime:
        engine = ScriptedEngine(image_location=str(config.image.location))
        if script.hold:
            engine.gate.clear()
        return Runtime(engine, script.cmdline, script.boot_id)

    return main(argv[split + 1 :], runtime_factory=runtime)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
