"""`make demo` (kexechibd/demo.py): the real-kernel cycle runs in the lab
(tests/lab/test_cycle.py proves the same cycle); here, that the model cycle
stays available with --model, and how the demo reads the guests' consoles."""

from __future__ import annotations

import json

import pytest

from kexechibd.demo import Console, main, model_window
from kexechibd.lab.qemu import LogLine
from tests.sizes import MIB


def test_the_model_cycle_runs_on_a_512_mib_machine(capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 4's acceptance machine; a small workload keeps the test quick.
    assert main(["--model", "--ram", "512", "--pages", "2000"]) == 0
    out = capsys.readouterr().out
    assert "kernel B's window: [0x0-0x9efff] System RAM, [0x10000000-0x17ffffff] System RAM" in out
    assert "Verdict: A resumed with its memory byte for byte" in out


@pytest.mark.parametrize(
    "ram, window",
    [(128, (64 * MIB, 32 * MIB)), (512, (256 * MIB, 128 * MIB)), (1024, (512 * MIB, 128 * MIB))],
)
def test_the_model_window_is_a_quarter_of_ram_at_most_128_mib_in_its_middle(
    ram: int, window: tuple[int, int]
) -> None:
    main_range = model_window(ram * MIB).main
    assert (main_range.start, main_range.size) == window


def test_a_model_too_small_for_b_is_refused_before_anything_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--model", "--ram", "96"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(
        "error: --ram 96: 96 MiB of RAM is too small for the demo: it gives kernel B a "
        "quarter of RAM and B needs at least 32 MiB; use --ram 128 or more\n"
    )


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
        "A | $ kexechibctl hibernate --direct --mode poweroff   (workload counter 8)",
        "B | B saves A: 40%",
        "C | resume: loading 20%",
        "C | kexec_core: Starting new kernel",
        "A | kexechibctl: hibernate: resumed",
        "A | Inspect: image invalid, None data pages, 44 chunks, None bytes (None)",
    ]
