"""`kexechibd --help` is the daemon's manual page: it names what the code and
the units really honour, so each test takes the names from where they live."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from kexechibd import cmdline, purgatory
from kexechibd.daemon.main import parse_args
from kexechibd.kernel import linux

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"


@pytest.fixture(scope="module")
def help_text() -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse_args(["--help"])
    return out.getvalue()


def kernel_conditions(unit: Path) -> list[str]:
    """Every ConditionKernelCommandLine= of a unit (the key repeats)."""
    prefix = "ConditionKernelCommandLine="
    return [
        line[len(prefix) :] for line in unit.read_text().splitlines() if line.startswith(prefix)
    ]


def test_it_names_every_kernel_parameter_the_daemon_reads(help_text: str) -> None:
    assert f"{cmdline.ROLE_PARAMETER}={cmdline.ROLE_SAVE}" in help_text
    assert f"{cmdline.JUMP_BACK_ENTRY}=" in help_text
    assert linux.ENABLE_PARAMETER in help_text


def test_it_names_every_kernel_parameter_the_units_test(help_text: str) -> None:
    for unit in ("kexechib-resume.service", "kexechib-save.service"):
        conditions = kernel_conditions(SYSTEMD / unit)
        assert conditions
        for condition in conditions:
            assert condition.lstrip("!") in help_text, f"{unit}: {condition}"


def test_it_names_the_purgatory_override_and_the_installed_purgatory(help_text: str) -> None:
    assert purgatory.ENV_PURGATORY in help_text
    assert str(purgatory.INSTALLED_PURGATORY) in help_text


def test_it_lists_every_unit_and_drop_in_we_ship(help_text: str) -> None:
    shipped = [p.name for p in (*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.target"))]
    shipped += [f"{p.parent.name}/{p.name}" for p in SYSTEMD.glob("*.d/*.conf")]
    # The globs found them all: 4 units, 4 drop-ins, sleep.conf.d and tmpfiles.d.
    assert len(shipped) == 10
    for name in shipped:
        assert name in help_text
