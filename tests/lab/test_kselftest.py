"""The kexec kselftest of staged loads (tools/testing/selftests/kexec/
test_kexec_staged.c, added by kernel/patches' `*-selftests-kexec-*` patch) on
the lab kernel: every one of its tests passes, none is skipped.

The selftest patch is not in `kernel/patches/series` (the lab kernel needs none
of it), so the program is built here from the patch's own text: its C file is
taken out with `git apply --include`, and compiled with the host's gcc, static,
against the uapi headers of the patched tree and the kselftest headers
(`kernel/build.sh --headers`, cached beside the lab kernel under the same key).

The same guest first runs it without CAP_SYS_BOOT (`setpriv` drops it from the
bounding set): then every test skips, and the program loads nothing.

The program makes real kexec_load calls (it loads, reads back and unloads
images, and never jumps): it runs only in a lab guest, whose command refuses to
start it unless the kernel command line carries the lab's
`kexechib.enable_kexec=1`. Nothing here runs it on the host.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from kexechibd.lab import GuestResult, GuestSpec, new_workdir, run_guest

pytestmark = pytest.mark.lab

TOP = Path(__file__).resolve().parents[2]
PATCHES = TOP / "kernel" / "patches"
SOURCE = "tools/testing/selftests/kexec/test_kexec_staged.c"
GUARD = "kexechib.enable_kexec=1"
REFUSED = 97  # the guest command's status when its kernel is no lab guest's

# A TAP result line of kselftest_harness.h: "ok 3 staged.name # SKIP why"
_RESULT = re.compile(r"^(not ok|ok) (\d+) (\S+)(?: # (\w+)(.*))?$")
_PLAN = re.compile(r"^1\.\.(\d+)$")


def _selftest_patch() -> Path:
    found = sorted(PATCHES.glob("*-selftests-kexec-*.patch"))
    assert len(found) == 1, f"expected one selftests-kexec patch in {PATCHES}: {found}"
    return found[0]


def _test_names(patch: Path) -> list[str]:
    """The TEST_F names the patch adds, as the harness reports them."""
    return [
        f"{fixture}.{name}"
        for fixture, name in re.findall(r"^\+TEST_F\((\w+), (\w+)\)$", patch.read_text(), re.M)
    ]


@dataclass(frozen=True)
class TapResult:
    ok: bool
    directive: str | None  # SKIP, XFAIL, ...
    reason: str


@dataclass(frozen=True)
class Run:
    guest: GuestResult
    plan: int | None
    results: dict[str, TapResult]
    status: int | None  # the program's exit status


def _section(guest: GuestResult, kind: str) -> Run:
    """The TAP output between the `kselftest-run kind=` and `kselftest-done` markers."""
    plan = None
    results: dict[str, TapResult] = {}
    status = None
    inside = False
    for line in guest.lines:
        text = line.text.strip()
        if f"KEXECHIB-LAB kselftest-run kind={kind}" in text:
            inside = True
        elif inside and f"KEXECHIB-LAB kselftest-done kind={kind}" in text:
            status = int(text.rsplit("status=", 1)[1])
            break
        elif not inside:
            continue
        elif m := _PLAN.match(text):
            plan = int(m.group(1))
        elif m := _RESULT.match(text):
            results[m.group(3)] = TapResult(
                ok=m.group(1) == "ok", directive=m.group(4), reason=(m.group(5) or "").strip()
            )
    return Run(guest, plan, results, status)


def _build(workdir: Path) -> Path:
    """The selftest program, built from the patch for the lab kernel's headers."""
    headers = subprocess.run(
        [str(TOP / "kernel" / "build.sh"), "--headers"],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout.split()[-1]
    tree = workdir / "src"
    tree.mkdir()
    # Outside any git repository `git apply` patches the current directory;
    # only the new C file is wanted (the rest edits files this tree lacks).
    subprocess.run(
        ["git", "apply", f"--include={SOURCE}", str(_selftest_patch())],
        cwd=tree,
        check=True,
        env={"GIT_CEILING_DIRECTORIES": str(workdir), "PATH": "/usr/bin:/bin"},
    )
    for header in Path(headers, "selftests").glob("*.h"):
        shutil.copy(header, tree / "tools" / "testing" / "selftests")
    program = workdir / "test_kexec_staged"
    subprocess.run(
        [
            "gcc",
            "-static",
            "-O2",
            "-Wall",
            "-Werror",
            "-D_GNU_SOURCE=",  # as the selftests' lib.mk does
            "-isystem",
            str(Path(headers, "include")),
            "-o",
            str(program),
            str(tree / SOURCE),
        ],
        check=True,
    )
    return program


def _run_command(kind: str, program: str) -> str:
    return (
        f"echo KEXECHIB-LAB kselftest-run kind={kind}\n"
        f"{program}\n"
        f"echo KEXECHIB-LAB kselftest-done kind={kind} status=$?\n"
    )


@pytest.fixture(scope="module")
def guest(lab: Path) -> GuestResult:
    workdir = new_workdir("kselftest")
    program = _build(workdir)
    spec = GuestSpec(
        command=(
            f"grep -qw {GUARD} /proc/cmdline || {{ echo 'not a lab guest'; exit {REFUSED}; }}\n"
            + _run_command("nocap", f"setpriv --bounding-set=-sys_boot {program}")
            + _run_command("full", str(program))
            + "echo KEXECHIB-LAB kselftest-after loaded=$(cat /sys/kernel/kexec_loaded)"
            " pgmap_bytes=$(wc -c < /proc/kexec_pgmap)\n"
        ),
        kernel=lab,
        memory_mib=512,
        append=GUARD,
        timeout=600,
        name="kselftest",
    )
    result = run_guest(spec, workdir)
    assert result.exit_status == 0, result.describe()
    return result


@pytest.fixture(scope="module")
def run(guest: GuestResult) -> Run:
    return _section(guest, "full")


@pytest.fixture(scope="module")
def nocap(guest: GuestResult) -> Run:
    return _section(guest, "nocap")


NAMES = _test_names(_selftest_patch())


def test_the_selftest_patch_adds_tests() -> None:
    assert len(NAMES) >= 10, NAMES


def test_the_program_reports_a_plan_for_every_test(run: Run) -> None:
    assert run.plan == len(NAMES), run.guest.describe()


@pytest.mark.parametrize("name", NAMES)
def test_passes_without_skipping(run: Run, name: str) -> None:
    got = run.results.get(name)
    assert got is not None, f"no TAP result for {name}\n{run.guest.describe()}"
    assert got.ok and got.directive is None, f"{name}: {got}\n{run.guest.describe(120)}"


def test_the_program_exits_with_success(run: Run) -> None:
    assert run.status == 0, run.guest.describe()


def test_without_cap_sys_boot_every_test_skips(nocap: Run) -> None:
    assert nocap.plan == len(NAMES), nocap.guest.describe()
    skipped = {name for name, got in nocap.results.items() if got.directive == "SKIP"}
    assert skipped == set(NAMES), nocap.guest.describe(120)
    assert nocap.status == 0, nocap.guest.describe()  # skips are no failure


def test_the_program_leaves_nothing_loaded_or_staged(guest: GuestResult) -> None:
    after = guest.marker("kselftest-after")
    assert after is not None, guest.describe()
    assert after.fields == {"loaded": "0", "pgmap_bytes": "0"}, after
