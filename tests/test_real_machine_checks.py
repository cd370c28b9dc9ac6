"""What KexecEngine checks only on this machine's own kernel (the Linux
backend; the model's machine has no mounts or boot order), before anything
happens: Resume refuses once
a filesystem that may hold A's data is writable, and the configured image
must be where the next boot looks (a partition, or a file on the root
filesystem).

The kernel here is a stand-in for the Linux backend in the one fact these
checks read (``backend`` is ``linux``); any other call would fail the
test.  The mount table is the host's own or a recorded one (monkeypatched
``mounts.read_mounts``): no real kexec is ever near.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from kexechibd import mounts
from kexechibd.cycle.engine import EngineSettings, KexecEngine
from kexechibd.errors import BadImage, NotSupported
from kexechibd.operation import CancelToken, ResumeOptions, Role, RoleDecision, State
from tests.mounts_support import EARLY, LATER


class RealMachine:
    backend = "linux"

    def cmdline(self) -> str:
        return "ro quiet"


class Quiet:
    def set_state(self, state: State) -> None: ...
    def set_progress(self, fraction: float, phase: str) -> None: ...
    async def before_jump(self) -> None: ...
    async def after_return(self) -> None: ...


def engine(location: Path) -> KexecEngine:
    settings = EngineSettings(
        image_location=location,
        chunk_size=1 << 20,
        saver_kernel=Path("/nonexistent/vmlinuz"),
        saver_initrd=None,
        saver_cmdline="",
        window_start=768 << 20,
        window_size=128 << 20,
        low_memory=True,
    )
    restorer = RoleDecision(Role.RESTORER, "a valid image of an earlier boot awaits resume")
    return KexecEngine(settings, RealMachine(), role=restorer)  # type: ignore[arg-type]


def resume(e: KexecEngine, image: Path) -> None:
    asyncio.run(e.resume(image, ResumeOptions(force=True), Quiet(), CancelToken()))


def test_resume_is_refused_once_a_data_filesystem_is_writable(tmp_path, monkeypatch):
    monkeypatch.setattr(mounts, "read_mounts", lambda: mounts.parse_mountinfo(LATER))
    with pytest.raises(NotSupported, match=r"mounted read-write") as refused:
        resume(engine(tmp_path / "image"), tmp_path / "image")
    assert str(refused.value).startswith(
        f"cannot resume {tmp_path / 'image'}: / (ext4 on /dev/vda1)"
    )


def test_resume_goes_on_to_the_image_while_only_the_root_is_mounted_read_only(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(mounts, "read_mounts", lambda: mounts.parse_mountinfo(EARLY))
    with pytest.raises(BadImage):  # the check passed; there is no image to load
        resume(engine(tmp_path / "image"), tmp_path / "image")


def test_an_image_file_off_the_root_filesystem_is_a_problem_before_hibernating(tmp_path):
    location = tmp_path / "image"
    location.write_bytes(b"")
    on_root = os.stat(location).st_dev == os.stat("/").st_dev
    problem = engine(location).location_problem()
    assert (problem == "") is on_root
    if not on_root:
        assert f"{location} is not on the root filesystem" in problem
