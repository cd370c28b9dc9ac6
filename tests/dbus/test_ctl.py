"""kexechibctl against the daemon on the test bus: what it prints, how it
shows progress, and that it exits non-zero with the daemon's message."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kexechibd.ctl.progress import Bar, Lines, display_for
from kexechibd.errors import BadImage
from kexechibd.operation import HibernateOptions, Mode
from tests.dbus.conftest import (
    SYSTEM_PYTHON,
    CallError,
    call,
    ctl_argv,
    run,
    system_python_unavailable,
    wait_thread_event,
)
from tests.dbus.scripted_engine import NO_KEXEC, make_image


async def ctl(bus, env, *args, **kw):
    return await run(ctl_argv(bus, *args), env=env, **kw)


async def test_status_shows_every_property(daemon, system_bus, ctl_env):
    result = await ctl(system_bus, ctl_env, "status")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines())
    assert {k: v.strip() for k, v in lines.items()} == {
        "State": "idle",
        "Progress": "0%",
        "LastError": "",
        "Role": "origin",
        "Backend": "model",
        "Support": "supported",
        "ImageLocation": daemon.engine.image_location,
    }


async def test_can_hibernate_prints_the_answer_and_exits_by_it(daemon, system_bus, ctl_env):
    result = await ctl(system_bus, ctl_env, "can-hibernate")
    assert (result.returncode, result.stdout) == (0, "yes\n")
    daemon.engine.support_report = NO_KEXEC
    result = await ctl(system_bus, ctl_env, "can-hibernate")
    assert (result.returncode, result.stdout) == (1, "na\n")


async def test_hibernate_waits_and_shows_progress_as_lines(daemon, system_bus, ctl_env):
    result = await ctl(
        system_bus,
        ctl_env,
        "hibernate",
        "--direct",
        "--mode",
        "checkpoint",
        "--compression",
        "lz4",
        "--level",
        "5",
    )
    assert result.returncode == 0, result.stderr
    assert daemon.engine.operations == [
        ("hibernate", HibernateOptions(mode=Mode.CHECKPOINT, compression="lz4", level=5))
    ]
    lines = result.stdout.splitlines()
    assert "hibernate: preparing" in lines
    assert "hibernate: jumping" in lines
    assert any(line.startswith("hibernate: loading ") and line.endswith("%") for line in lines)
    assert lines[-1] == "hibernate: resumed"
    assert "\r" not in result.stdout


async def test_a_refusal_exits_1_with_the_daemons_message(daemon, system_bus, ctl_env):
    daemon.engine.failure = BadImage("cannot preallocate the image: no space left on /var")
    result = await ctl(system_bus, ctl_env, "hibernate", "--direct")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "kexechibctl: cannot preallocate the image: no space left on /var "
        "[org.kexechib1.Error.BadImage]"
    )


async def test_bad_usage_exits_2(system_bus, ctl_env):
    result = await ctl(system_bus, ctl_env, "hibernate", "--mode", "suspend")
    assert result.returncode == 2
    assert "invalid choice: 'suspend'" in result.stderr


async def test_without_a_daemon_it_says_so(system_bus, ctl_env):
    result = await ctl(system_bus, ctl_env, "status")
    assert result.returncode == 1
    assert "kexechibd is not running" in result.stderr


async def test_a_second_hibernate_is_refused_as_busy(daemon, system_bus, ctl_env, client):
    daemon.engine.gate.clear()
    first = asyncio.create_task(call(client, "Hibernate", "a{sv}", [{}]))
    await wait_thread_event(daemon.engine.waiting)
    result = await ctl(system_bus, ctl_env, "hibernate", "--direct")
    assert result.returncode == 1
    assert "[org.kexechib1.Error.Busy]" in result.stderr
    result = await ctl(system_bus, ctl_env, "cancel")
    assert result.returncode == 0, result.stderr
    with pytest.raises(CallError, match="Cancelled"):
        await asyncio.wait_for(first, 10)


async def test_cancel_with_nothing_running(daemon, system_bus, ctl_env):
    result = await ctl(system_bus, ctl_env, "cancel")
    assert result.returncode == 1
    assert "nothing to cancel [org.kexechib1.Error.NotRunning]" in result.stderr


async def test_resume_and_inspect(daemon, system_bus, ctl_env, tmp_path):
    result = await ctl(system_bus, ctl_env, "resume", str(tmp_path / "missing"))
    assert result.returncode == 1
    assert "no image at" in result.stderr and "BadImage" in result.stderr
    image = make_image(tmp_path / "image-1", boot_id="earlier")
    result = await ctl(system_bus, ctl_env, "resume", "--load-only", str(image))
    assert result.returncode == 0, result.stderr
    result = await ctl(system_bus, ctl_env, "inspect", str(image))
    assert result.returncode == 0, result.stderr
    assert "valid:          True" in result.stdout
    assert "boot-id:        earlier" in result.stdout


async def test_jump_back_without_a_peer(daemon, system_bus, ctl_env):
    result = await ctl(system_bus, ctl_env, "jump-back")
    assert result.returncode == 1
    assert "[org.kexechib1.Error.NoPeer]" in result.stderr


async def test_ctrl_c_cancels_and_a_second_ctrl_c_leaves(daemon, system_bus, ctl_env):
    daemon.engine.jump_gate.clear()  # past the point of no return: cancel cannot work
    proc = await asyncio.create_subprocess_exec(
        *ctl_argv(system_bus, "hibernate", "--direct"),
        env=ctl_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await wait_thread_event(daemon.engine.committed, 20)
    proc.send_signal(signal.SIGINT)
    await asyncio.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 130
    assert "cannot cancel: the hibernate has passed the point of no return" in out.decode()
    daemon.engine.jump_gate.set()


async def test_on_a_terminal_progress_is_a_bar(daemon, system_bus, ctl_env):
    primary, secondary = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        *ctl_argv(system_bus, "hibernate", "--direct"),
        env={**ctl_env, "COLUMNS": "100"},
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    output = bytearray()
    loop = asyncio.get_running_loop()
    while True:
        try:
            chunk = await loop.run_in_executor(None, os.read, primary, 4096)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        output += chunk
    await proc.wait()
    os.close(primary)
    text = output.decode()
    assert proc.returncode == 0, text
    assert "\rhibernate [" in text
    assert "] 100% " in text
    assert text.rstrip().endswith("hibernate: resumed")


def offline(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "kexechibd.ctl", "image", *args],
        env=env,
        capture_output=True,
        check=False,
    )


@pytest.fixture
def real_image(tmp_path):
    """An image written by the image library (no daemon, no engine)."""
    from kexechibd.image import ImageStore
    from tests.test_image_helpers import make_meta, page

    path = tmp_path / "image"
    with ImageStore(path).writer(make_meta()) as writer:
        writer.add(0x100000, page(1) + page(2))
        writer.add(0x200000, bytes(4096))
        writer.commit()
    return path


def test_image_inspect_prints_what_the_image_says(real_image, ctl_env):
    result = offline(ctl_env, "inspect", str(real_image))
    assert result.returncode == 0, result.stderr
    fields = {
        k: v.strip()
        for k, v in (line.split(":", 1) for line in result.stdout.decode().splitlines())
    }
    assert fields["boot-id"] == "b0b0-1"
    assert fields["state"] == "committed"
    assert fields["jump-back-entry"] == "0x100002000"
    assert (fields["data-pages"], fields["zero-pages"]) == ("2", "1")
    as_json = json.loads(offline(ctl_env, "inspect", "--json", str(real_image)).stdout)
    assert as_json["kernel-release"] == "6.1.0-kexechib"


def test_image_verify_checks_every_chunk_and_names_a_bad_one(real_image, ctl_env):
    result = offline(ctl_env, "verify", str(real_image))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == (
        f"{real_image}: checksums OK (1 chunk, 2 data and 1 zero pages); "
        "state: committed (resumable)\n"
    )
    data = bytearray(real_image.read_bytes())
    data[-200] ^= 0xFF  # inside the chunk data or the index
    real_image.write_bytes(bytes(data))
    result = offline(ctl_env, "verify", str(real_image))
    assert result.returncode == 1
    assert result.stderr.startswith(b"kexechibctl: ")


@pytest.mark.parametrize(
    "state, meaning",
    [
        ("consumed", "resumed once; resuming it again needs force"),
        ("invalid", "consumed or withdrawn; not resumable"),
    ],
)
def test_image_verify_of_an_intact_image_that_will_not_resume_exits_3(
    real_image, ctl_env, state, meaning
):
    from kexechibd.image import ImageStore

    store = ImageStore(real_image)
    if state == "consumed":
        store.mark_consumed()
    else:
        store.invalidate()
    result = offline(ctl_env, "verify", str(real_image))
    assert result.returncode == 3, result.stderr
    assert result.stdout.decode() == (
        f"{real_image}: checksums OK (1 chunk, 2 data and 1 zero pages); "
        f"state: {state} ({meaning})\n"
    )


def test_the_help_documents_verifys_exit_status(ctl_env):
    result = subprocess.run(
        [sys.executable, "-m", "kexechibd.ctl", "--help"], env=ctl_env, capture_output=True
    )
    assert b"  3    image verify: the checksums are OK, but the image is not resumable" in (
        result.stdout
    )


def test_image_export_writes_an_elf_core_readelf_reads(real_image, ctl_env, tmp_path):
    core = tmp_path / "core"
    result = offline(ctl_env, "export", str(real_image), str(core))
    assert result.returncode == 0, result.stderr
    assert core.read_bytes()[:4] == b"\x7fELF"
    headers = subprocess.run(
        ["readelf", "-l", str(core)], capture_output=True, text=True, check=True
    ).stdout
    assert (
        "CORE (Core file)"
        in subprocess.run(["readelf", "-h", str(core)], capture_output=True, text=True).stdout
    )
    assert headers.count("LOAD") == 2
    again = offline(ctl_env, "export", str(real_image), str(core))
    assert again.returncode == 1 and b"File exists" in again.stderr


def test_image_tools_refuse_an_image_others_could_have_written(real_image, ctl_env):
    real_image.chmod(0o666)
    result = offline(ctl_env, "inspect", str(real_image))
    assert result.returncode == 1
    assert b"writable" in result.stderr


def test_image_tools_on_a_missing_image(ctl_env, tmp_path):
    result = offline(ctl_env, "verify", str(tmp_path / "nothing"))
    assert result.returncode == 1
    assert b"no image at" in result.stderr


# ------------------------------------------------------------------ displays


def test_lines_report_state_changes_and_every_ten_percent():
    out = io.StringIO()
    lines = Lines(out, "hibernate")
    for state, progress in [
        ("preparing", 0.0),
        ("preparing", 0.05),
        ("preparing", 0.12),
        ("preparing", 0.19),
        ("loading", 0.31),
        ("loading", 1.0),
    ]:
        lines.update(state, progress)
    assert out.getvalue().splitlines() == [
        "hibernate: preparing",
        "hibernate: preparing 10%",
        "hibernate: loading",
        "hibernate: loading 30%",
        "hibernate: loading 100%",
    ]


def test_a_bar_redraws_one_line_and_ends_it():
    out = io.StringIO()
    bar = Bar(out, "resume")
    bar.update("loading", 0.5)
    bar.update("loading", 0.5)  # nothing new: nothing drawn
    bar.update("jumping", 1.0)
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 2
    assert "[" + "#" * 15 + "." * 15 + "]  50% loading" in text
    assert text.endswith("\n")


def test_the_display_follows_the_stream(tmp_path: Path):
    with open(tmp_path / "f", "w") as plain:
        assert isinstance(display_for(plain, "x"), Lines)
    assert type(display_for(io.StringIO(), "x", quiet=True)).__name__ == "Silent"


def test_image_discard_makes_an_image_never_resumable(real_image, ctl_env):
    result = offline(ctl_env, "discard", str(real_image))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith(f"{real_image}: discarded; no boot will resume it")
    result = offline(ctl_env, "verify", str(real_image))
    assert result.returncode == 3  # intact, not resumable
    assert "state: invalid" in result.stdout.decode()


def test_image_discard_takes_the_configured_image_by_default(real_image, ctl_env, tmp_path):
    conf = tmp_path / "kexechibd.conf"
    conf.write_text(f"[image]\nlocation = {real_image}\n")
    code = (
        "import sys; from pathlib import Path; from kexechibd import config;"
        f"config.DEFAULT_PATH = Path({str(conf)!r});"
        "from kexechibd.ctl.main import main; sys.exit(main(['image', 'discard']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=ctl_env, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert offline(ctl_env, "verify", str(real_image)).returncode == 3


def test_image_discard_checks_the_file_as_a_resume_does(real_image, ctl_env):
    real_image.chmod(0o666)
    result = offline(ctl_env, "discard", str(real_image))
    assert result.returncode == 1
    assert result.stderr.decode().startswith(f"kexechibctl: cannot discard {real_image}: ")
    real_image.chmod(0o600)
    assert offline(ctl_env, "verify", str(real_image)).returncode == 0  # untouched


def test_image_discard_needs_root(real_image, anyone_ctl_env):
    # Debian's python3 and a copy of the package that nobody may read: the
    # checkout and its venv may sit where nobody cannot look (mktemp -d).
    reason = system_python_unavailable()
    if reason:
        pytest.skip(reason=reason)
    result = subprocess.run(
        [
            *("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SYSTEM_PYTHON),
            *("-m", "kexechibd.ctl", "image", "discard", str(real_image)),
        ],
        env=anyone_ctl_env,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 1
    assert b"image discard needs root" in result.stderr
