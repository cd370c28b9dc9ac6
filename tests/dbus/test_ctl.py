"""kexechibctl against the daemon on the test bus: what it prints, how it
shows progress, and that it exits non-zero with the daemon's message."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import re
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kexechibd.ctl import exits
from kexechibd.ctl.offline import _size as offline_size
from kexechibd.ctl.progress import Bar, Lines, Measure, display_for
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


async def test_inspect_and_image_info_agree_on_a_missing_image(
    daemon, system_bus, ctl_env, tmp_path
):
    missing = tmp_path / "nonexistent"
    by_daemon = await ctl(system_bus, ctl_env, "inspect", str(missing))
    by_file = offline(ctl_env, "info", str(missing))
    assert by_daemon.returncode == by_file.returncode == exits.FAILURE
    assert "no image at" in by_daemon.stdout
    assert b"no image at" in by_file.stderr


async def test_inspect_of_a_consumed_image_exits_3(daemon, system_bus, ctl_env, tmp_path):
    image = make_image(tmp_path / "image", consumed=True)
    result = await ctl(system_bus, ctl_env, "inspect", str(image))
    assert result.returncode == exits.NOT_RESUMABLE, result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ("status", "--bus={bus}"),
        ("--quiet", "status", "--bus", "{bus}"),
        ("inspect", "--no-ask-password", "--bus={bus}", ""),
    ],
)
async def test_global_options_may_come_after_the_command(daemon, system_bus, ctl_env, argv):
    command = [sys.executable, "-m", "kexechibd.ctl"]
    command += [a.format(bus=system_bus.address) for a in argv]
    result = await run(command, env=ctl_env)
    assert result.returncode in (exits.OK, exits.FAILURE), result.stderr
    assert "usage:" not in result.stderr
    assert "not running" not in result.stderr


async def test_an_option_given_twice_keeps_the_one_after_the_command(daemon, system_bus, ctl_env):
    command = [sys.executable, "-m", "kexechibd.ctl", "--bus=unix:path=/nonexistent"]
    result = await run([*command, "status", f"--bus={system_bus.address}"], env=ctl_env)
    assert result.returncode == exits.OK, result.stderr


async def test_a_closed_pipe_ends_quietly(daemon, system_bus, ctl_env):
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write fails with EPIPE
    try:
        proc = await asyncio.create_subprocess_exec(
            *ctl_argv(system_bus, "status"),
            env=ctl_env,
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert (proc.returncode, err) == (exits.CLOSED_PIPE, b"")


async def test_status_piped_into_head_prints_no_traceback(daemon, system_bus, ctl_env):
    argv = " ".join(shlex.quote(a) for a in ctl_argv(system_bus, "status"))
    result = await run(["sh", "-c", f"{argv} | head -1"], env=ctl_env)
    assert result.stdout == "State:          idle\n"
    assert result.stderr == ""


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


async def on_a_terminal(argv, env):
    """Run ``argv`` with a terminal for its input and output: (exit status,
    everything it wrote)."""
    primary, secondary = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env={**env, "COLUMNS": "100"},
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
    return proc.returncode, output.decode()


async def test_on_a_terminal_progress_is_a_bar(daemon, system_bus, ctl_env):
    returncode, text = await on_a_terminal(ctl_argv(system_bus, "hibernate", "--direct"), ctl_env)
    assert returncode == 0, text
    assert "\rhibernate [" in text
    assert "] 100% " in text
    assert text.rstrip().endswith("hibernate: resumed")


def offline_argv(*args):
    return [sys.executable, "-m", "kexechibd.ctl", "image", *map(str, args)]


def offline(env, *args):
    return subprocess.run(offline_argv(*args), env=env, capture_output=True, check=False)


@pytest.fixture
def real_image(tmp_path):
    """An image written by the image library (no daemon, no engine)."""
    from kexechibd.image import open_store
    from tests.image_support import make_meta, page

    path = tmp_path / "image"
    with open_store(path).writer(make_meta()) as writer:
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
    from kexechibd.image import open_store

    store = open_store(real_image)
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


def test_the_help_prints_the_one_exit_status_table(ctl_env):
    result = subprocess.run(
        [sys.executable, "-m", "kexechibd.ctl", "--help"], env=ctl_env, capture_output=True
    )
    words = " ".join(result.stdout.decode().split())
    for code, meaning in exits.TABLE:
        assert f"{code} {meaning}" in words


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


def test_image_export_writes_a_file_only_root_may_read(real_image, ctl_env, tmp_path):
    core = tmp_path / "core"
    result = subprocess.run(
        ["sh", "-c", 'umask 022; exec "$@"', "sh", *offline_argv("export", real_image, core)],
        env=ctl_env,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(core.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["core", "image"]


def test_image_export_to_an_existing_file_says_so_and_leaves_it_alone(
    real_image, ctl_env, tmp_path
):
    core = tmp_path / "core"
    core.write_bytes(b"someone's data")
    result = offline(ctl_env, "export", str(real_image), str(core))
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"kexechibctl: {core} exists; an export never replaces a file (it may be another "
        "image or a core you still need): remove it or name another\n"
    )
    assert core.read_bytes() == b"someone's data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["core", "image"]


def test_image_export_of_a_damaged_image_leaves_no_file(real_image, ctl_env, tmp_path):
    data = bytearray(real_image.read_bytes())
    data[-200] ^= 0xFF  # inside the chunk data or the index
    real_image.write_bytes(bytes(data))
    core = tmp_path / "core"
    result = offline(ctl_env, "export", str(real_image), str(core))
    assert result.returncode == 1
    assert result.stderr.startswith(b"kexechibctl: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image"]


@pytest.mark.parametrize("action", ["info", "export"])
def test_an_image_command_ends_quietly_on_a_closed_pipe(real_image, ctl_env, action):
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write fails with EPIPE
    argv = offline_argv(action, real_image, *(["-"] if action == "export" else []))
    try:
        result = subprocess.run(argv, env=ctl_env, stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (exits.CLOSED_PIPE, b"")


def test_image_info_gives_the_creation_time_and_sizes_readably(real_image, ctl_env):
    result = offline({**ctl_env, "TZ": "UTC"}, "info", str(real_image))
    assert result.returncode == 0, result.stderr
    fields = {
        k: v.strip()
        for k, v in (line.split(":", 1) for line in result.stdout.decode().splitlines())
    }
    assert re.fullmatch(r"\d+(\.\d+)? \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)", fields["created"])
    assert re.fullmatch(r"4194304 \(4 MiB\)", fields["chunk-size"])
    assert re.fullmatch(r"\d+ \(\d+(\.\d+)? (bytes|KiB|MiB)\)", fields["stored-bytes"])


@pytest.mark.parametrize("state", ["consumed", "invalid"])
def test_image_info_of_an_image_that_will_not_resume_exits_3(real_image, ctl_env, state):
    from kexechibd.image import open_store

    store = open_store(real_image)
    store.mark_consumed() if state == "consumed" else store.invalidate()
    result = offline(ctl_env, "info", str(real_image))
    assert result.returncode == exits.NOT_RESUMABLE, result.stderr
    assert f"state:             {state}" in result.stdout.decode()


def test_image_create_takes_a_decimal_size(ctl_env, tmp_path):
    # The directory does not exist: the command fails after parsing the size,
    # before anything is written.
    result = offline(ctl_env, "create", str(tmp_path / "no-dir" / "image"), "--size", "1.5G")
    assert result.returncode == exits.FAILURE
    assert b"not a size" not in result.stderr
    assert b"No such file or directory" in result.stderr


@pytest.mark.parametrize(
    "size, value",
    [("4096", 4096), ("1.5G", 3 << 29), ("0.5k", 512), ("1.1K", 1127), ("2T", 2 << 40)],
)
def test_sizes_may_be_decimal_and_round_up_to_a_byte(size, value):
    assert offline_size(size) == value


@pytest.mark.parametrize("size", ["1.5Q", "-1G", "0", "nanG", "infM", ""])
def test_a_size_that_is_not_one_is_a_usage_error(ctl_env, tmp_path, size):
    result = offline(ctl_env, "create", str(tmp_path / "image"), f"--size={size}")
    assert result.returncode == exits.USAGE
    assert b"not a size" in result.stderr
    assert not (tmp_path / "image").exists()


@pytest.mark.parametrize("mode", [0o666, 0o644])
def test_image_tools_refuse_an_image_others_could_read_or_write(real_image, ctl_env, mode):
    real_image.chmod(mode)
    result = offline(ctl_env, "inspect", str(real_image))
    assert result.returncode == 1
    assert f"must be 0600: chmod 600 {real_image}".encode() in result.stderr


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


async def test_on_a_terminal_a_state_without_measured_progress_says_unknown(
    daemon, system_bus, ctl_env
):
    returncode, text = await on_a_terminal(ctl_argv(system_bus, "hibernate", "--direct"), ctl_env)
    assert returncode == 0, text
    # The scripted engine reports progress only after it entered a state.
    assert f"\rhibernate [{'?' * 30}] unknown preparing" in text
    assert " 0% preparing" not in text


def test_a_state_is_unmeasured_until_the_daemon_reports_progress_within_it():
    measure = Measure()
    assert measure.change({"State": "preparing", "Progress": 0.0}) == ("preparing", None)
    assert measure.change({"State": "loading"}) == ("loading", None)
    assert measure.change({"Progress": 0.4}) == ("loading", 0.4)
    assert measure.change({"Progress": 0.5}) == ("loading", 0.5)
    assert measure.change({"State": "jumping"}) == ("jumping", None)


def test_a_bar_without_measured_progress_says_unknown():
    out = io.StringIO()
    bar = Bar(out, "hibernate")
    bar.update("loading", None)
    assert out.getvalue() == f"\rhibernate [{'?' * 30}] unknown loading"


def test_lines_without_measured_progress_give_no_percentage():
    out = io.StringIO()
    lines = Lines(out, "hibernate")
    lines.update("preparing", None)
    lines.update("loading", None)
    assert out.getvalue().splitlines() == ["hibernate: preparing", "hibernate: loading"]


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


def test_image_discard_wipes_the_image(real_image, ctl_env):
    size = real_image.stat().st_size
    result = offline(ctl_env, "discard", str(real_image))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith(
        f"{real_image}: discarded; {size >> 20} MiB of image overwritten with zeros, "
        "no boot will resume it"
    )
    result = offline(ctl_env, "verify", str(real_image))
    assert result.returncode == 1 and "no image at" in result.stderr.decode()


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
    assert not real_image.exists()


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
