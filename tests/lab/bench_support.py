"""Running a lab benchmark from a test: its ``main`` as ``python -m bench.X``
runs it, on the lab fixture's kernel, and its stdout lines."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest


def bench_output(lab: Path, main: Callable[[Sequence[str]], int], argv: Sequence[str]) -> list[str]:
    """The lines ``main(argv)`` prints with ``lab`` as the lab kernel; it must exit 0."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KEXECHIB_LAB_KERNEL", str(lab))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
    assert status == 0, err.getvalue()
    return out.getvalue().splitlines()
