"""`make demo` (kexechibd/demo.py): the real-kernel cycle runs in the lab
(tests/lab/test_cycle.py proves the same cycle); here, that the model cycle
stays available with --model, and how the demo reads the guests' consoles."""

from __future__ import annotations

import json

import pytest

from kexechibd.demo import Console, main
from kexechibd.lab.qemu import LogLine


def test_the_model_cycle_stays_available_with_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "--pages", "2000"]) == 0
    assert "Verdict: A resumed with its memory byte for byte" in capsys.readouterr().out


def test_the_console_names_each_kernel_and_shows_what_matters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    console = Console()
    image = {"data": [{k: {"data": v} for k, v in {"state": "invalid", "chunks": 44}.items()}]}
    for which, text in [
        ("1", "Linux version 6.1.192 (kexechib@lab)"),
        ("1", "KEXECHIB-LAB a-hibernate cycle=poweroff client=kexechibctl counter=8"),
        ("1", "virtio_blk virtio1: 1/0/0 default/read/poll queues"),
        ("1", "Linux version 6.1.192 (kexechib@lab)"),
        ("1", "KEXECHIB-LAB save-progress percent=40"),
        ("2", "kexechibd: INFO: resume: loading 20%"),
        ("2", "kexec_core: Starting new kernel"),
        ("2", "hibernate: resumed"),
        ("2", "KEXECHIB-LAB a-image " + json.dumps(image)),
    ]:
        console.line(which, LogLine(1.0, text))
    shown = [line.split("] ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert shown == [
        "A | $ kexechibctl hibernate --mode poweroff   (workload counter 8)",
        "B | B saves A: 40%",
        "C | resume: loading 20%",
        "C | kexec_core: Starting new kernel",
        "A | kexechibctl: hibernate: resumed",
        "A | Inspect: image invalid, None data pages, 44 chunks, None bytes (None)",
    ]
