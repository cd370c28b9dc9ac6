"""kexechibd as a process (run_daemon.py: the real main() with the scripted
engine): sd_notify, SIGTERM, configuration errors, the name, --oneshot, and
where the log goes."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from kexechibd.busapi import BUS_NAME
from kexechibd.daemon import logs
from kexechibd.daemon.notify import Notifier
from tests.dbus.conftest import REPO, run
from tests.dbus.scripted_engine import make_image

LAUNCHER = Path(__file__).resolve().parent / "run_daemon.py"


class DaemonProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str]:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await self.exit(timeout)

    async def exit(self, timeout: float = 30) -> tuple[int, str]:
        """Wait for the process to end by itself."""
        try:
            _, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"kexechibd did not end within {timeout} s") from None
        assert self.proc.returncode is not None
        return self.proc.returncode, err.decode()


@pytest.fixture
async def spawned():
    """Every daemon process a test starts; killed and reaped if still there."""
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def spawn(
    spawned,
    bus,
    tmp_path,
    *script: str,
    config: str = "",
    extra_env=None,
    args: tuple[str, ...] = (),
) -> DaemonProcess:
    conf = tmp_path / "kexechibd.conf"
    conf.write_text(config or f"[image]\nlocation = {tmp_path / 'image'}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        env.pop(name, None)
    env.update(extra_env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(LAUNCHER),
        *script,
        "--",
        f"--bus={bus.address}",
        f"--config={conf}",
        *args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    spawned.append(proc)
    return DaemonProcess(proc)


async def started(spawned, bus, tmp_path, *script: str, **kw) -> DaemonProcess:
    daemon = await spawn(spawned, bus, tmp_path, *script, **kw)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not bus.has_owner(BUS_NAME):
        if daemon.proc.returncode is not None or loop.time() > deadline:
            code, err = await daemon.stop()
            raise AssertionError(f"kexechibd did not start ({code}): {err}")
        await asyncio.sleep(0.05)
    return daemon


def gdbus(bus, *args):
    return [
        "gdbus",
        "call",
        "--system",
        "--dest",
        BUS_NAME,
        "--object-path",
        "/org/kexechib1",
        "--method",
        *args,
    ]


@pytest.fixture
async def notifications(tmp_path):
    """A NOTIFY_SOCKET read as systemd reads it: promptly (a full socket
    would block the sender)."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    messages: list[dict[str, str]] = []

    async def read() -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(sock, 4096)
            messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    reader = asyncio.create_task(read())
    yield path, messages
    reader.cancel()
    sock.close()


async def test_systemd_hears_ready_status_watchdog_and_stopping(
    system_bus, tmp_path, spawned, notifications
):
    path, messages = notifications
    daemon = await started(
        spawned,
        system_bus,
        tmp_path,
        extra_env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"},
    )
    await asyncio.sleep(0.5)
    result = await run(
        gdbus(system_bus, "org.kexechib1.Manager.Hibernate", "{}"), env=system_bus.env()
    )
    assert result.returncode == 0, result.stderr
    code, err = await daemon.stop()
    assert code == 0, err
    await asyncio.sleep(0.1)
    ready = [m for m in messages if m.get("READY") == "1"]
    assert len(ready) == 1 and ready[0]["STATUS"].startswith("idle; role origin")
    assert sum(m.get("WATCHDOG") == "1" for m in messages) >= 3
    statuses = [m["STATUS"] for m in messages if "STATUS" in m]
    assert any(s.startswith("hibernate: preparing") for s in statuses)
    assert any(s.startswith("hibernate: jumping") for s in statuses)
    assert messages[-1] == {"STOPPING": "1", "STATUS": "stopping"}


async def test_sigterm_stops_cleanly_and_releases_the_name(system_bus, tmp_path, spawned):
    daemon = await started(spawned, system_bus, tmp_path)
    code, err = await daemon.stop()
    assert code == 0
    assert "kexechibd: INFO: SIGTERM: stopping" in err
    assert "kexechibd: INFO: stopped" in err
    assert not system_bus.has_owner(BUS_NAME)


async def test_sigterm_cancels_a_running_hibernate_and_answers_its_caller(
    system_bus, tmp_path, spawned
):
    daemon = await started(spawned, system_bus, tmp_path, "--hold")
    caller = asyncio.create_task(
        run(gdbus(system_bus, "org.kexechib1.Manager.Hibernate", "{}"), env=system_bus.env())
    )
    await asyncio.sleep(0.5)
    assert not caller.done()
    code, err = await daemon.stop()
    assert code == 0, err
    answer = await caller
    assert "org.kexechib1.Error.Cancelled" in answer.stderr
    assert not system_bus.has_owner(BUS_NAME)


async def test_an_invalid_configuration_stops_the_start_with_status_78(
    system_bus, tmp_path, spawned
):
    daemon = await spawn(spawned, system_bus, tmp_path, config="[image]\ncompression = gzip\n")
    code, err = await daemon.exit()
    assert code == 78
    assert "kexechibd.conf: [image] compression = 'gzip'" in err
    assert "allowed: zstd | lz4 | none" in err


async def test_a_second_daemon_cannot_take_the_name(system_bus, tmp_path, spawned):
    first = await started(spawned, system_bus, tmp_path)
    try:
        second_dir = tmp_path / "second"
        second_dir.mkdir()
        second = await spawn(spawned, system_bus, second_dir)
        code, err = await second.exit()
        assert code == 1
        assert "org.kexechib1 is already owned by another process" in err
    finally:
        assert (await first.stop())[0] == 0


async def test_kernel_b_saves_at_start(system_bus, tmp_path, spawned):
    daemon = await started(
        spawned,
        system_bus,
        tmp_path,
        "--cmdline",
        "kexechib.role=save kexec_jump_back_entry=0x1000",
    )
    await asyncio.sleep(0.3)
    code, err = await daemon.stop()
    assert code == 0
    assert "role saver" in err
    assert "save started" in err and "save finished" in err


@pytest.mark.parametrize(
    "cmdline, image, code, words",
    [
        ("kexechib.role=save kexec_jump_back_entry=0x1000", None, 0, "save finished"),
        ("kexechib.role=save", None, 1, "kexec_jump_back_entry= is missing"),
        ("ro quiet", "earlier-boot", 0, "resume finished"),
        (
            "ro quiet",
            "boot-of-this-test",
            0,
            "nothing to do: the valid image was made by this boot",
        ),
        ("ro quiet", None, 0, "nothing to do: no image"),
        ("ro quiet noresume", "earlier-boot", 0, "noresume given"),
        ("ro kexechib.noresume", "earlier-boot", 0, "noresume given"),
    ],
)
async def test_oneshot_does_the_roles_automatic_work_without_a_bus(
    tmp_path, cmdline, image, code, words
):
    if image is not None:
        make_image(tmp_path / "image", boot_id=image)
    conf = tmp_path / "kexechibd.conf"
    conf.write_text(f"[image]\nlocation = {tmp_path / 'image'}\n")
    result = await run(
        [
            sys.executable,
            str(LAUNCHER),
            "--cmdline",
            cmdline,
            "--",
            "--oneshot",
            f"--config={conf}",
            "--bus=unix:path=/nonexistent",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == code, result.stderr
    assert words in result.stderr


async def oneshot(tmp_path, image, cmdline="ro quiet"):
    """``kexechibd --oneshot`` as kexechib-resume.service runs it, on ``image``."""
    conf = tmp_path / "kexechibd.conf"
    conf.write_text(f"[image]\nlocation = {image}\n")
    return await run(
        [
            *(sys.executable, str(LAUNCHER), "--cmdline", cmdline),
            *("--", "--oneshot", f"--config={conf}"),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.mark.parametrize("parameter", ["noresume", "kexechib.noresume"])
async def test_a_noresume_boot_says_so_on_the_console_and_leaves_the_image(tmp_path, parameter):
    image = make_image(tmp_path / "image", boot_id="earlier-boot")
    before = image.read_bytes()
    result = await oneshot(tmp_path, image, f"ro {parameter}")
    assert result.returncode == 0, result.stderr
    # stdout: what kexechib-resume.service sends to the console.
    assert result.stdout == (
        f"kexechib: noresume given; the image at {image} is left in place: boot without it "
        "to resume, or `kexechibctl image discard` it\n"
    )
    assert "resume started" not in result.stderr
    assert image.read_bytes() == before


async def test_a_damaged_image_boots_normally_and_says_so_on_the_console(tmp_path):
    image = tmp_path / "image"
    image.write_bytes(b"\x7fELF garbage")
    result = await oneshot(tmp_path, image)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"kexechib: the image at {image} cannot be resumed (")
    assert "booting normally and leaving it in place" in result.stdout
    assert image.read_bytes() == b"\x7fELF garbage"


async def test_after_the_initramfs_looked_at_the_image_the_booted_system_does_not_resume_it(
    tmp_path,
):
    # scripts/local-premount/kexechib leaves /run/kexechib/initramfs-ran when
    # kexechibd --initramfs returned; the root is mounted by now.
    image = make_image(tmp_path / "image", boot_id="earlier-boot")
    before = image.read_bytes()
    ran = tmp_path / "initramfs-ran"
    ran.write_text("0\n")
    conf = tmp_path / "kexechibd.conf"
    conf.write_text(f"[image]\nlocation = {image}\n")
    result = await run(
        [
            *(sys.executable, str(LAUNCHER), "--initramfs-ran", str(ran)),
            *("--", "--oneshot", f"--config={conf}"),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"kexechib: the initramfs did not resume the image at {image}")
    assert "resume started" not in result.stderr
    assert image.read_bytes() == before


async def test_oneshot_logs_the_progress_every_ten_percent(tmp_path):
    # No bus to watch Progress on: a resume early in boot shows it in the log.
    make_image(tmp_path / "image", boot_id="earlier-boot")
    conf = tmp_path / "kexechibd.conf"
    conf.write_text(f"[image]\nlocation = {tmp_path / 'image'}\n")
    result = await run(
        [sys.executable, str(LAUNCHER), "--", "--oneshot", f"--config={conf}"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if "resume: loading" in line]
    # The scripted engine reports five steps.
    assert progress == [f"kexechibd: INFO: resume: loading {p}%" for p in (20, 40, 60, 80, 100)]


# ------------------------------------------------------------------ logging, notify


def test_the_journal_is_used_only_when_stderr_is_systemds_journal_stream(tmp_path):
    stream = open(tmp_path / "stream", "w")  # noqa: SIM115
    try:
        st = os.fstat(stream.fileno())
        journal = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert logs.stderr_is_journal(stream, journal)
        assert type(logs.make_handler("kexechibd", stream, journal)).__name__ == "JournalHandler"
        assert not logs.stderr_is_journal(stream, {"JOURNAL_STREAM": "1:2"})
        assert not logs.stderr_is_journal(stream, {})
        plain = logs.make_handler("kexechibd", stream, {})
        assert type(plain).__name__ == "StreamHandler"
    finally:
        stream.close()


def test_structured_fields_reach_the_journal(tmp_path, monkeypatch):
    # journald itself is not ours to write to: sendv, the C call at the end
    # of systemd.journal.send, is stubbed; everything before it is real.
    import logging

    from systemd import journal

    sent: list[tuple[str | bytes, ...]] = []
    monkeypatch.setattr(journal, "sendv", lambda *lines: sent.append(lines))
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        handler = logs.make_handler(
            "kexechibd", stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        )
    logger = logging.Logger("kexechibd.manager")  # not the global one: nothing else sees it
    logger.addHandler(handler)
    logger.info(
        "hibernate started by %s",
        ":1.5",
        extra={"KEXECHIB_OPERATION": "hibernate", "KEXECHIB_CALLER": ":1.5"},
    )
    (lines,) = sent
    for field in (
        "MESSAGE=hibernate started by :1.5",
        "PRIORITY=6",
        "SYSLOG_IDENTIFIER=kexechibd",
        "KEXECHIB_OPERATION=hibernate",
        "KEXECHIB_CALLER=:1.5",
    ):
        assert field in lines


def test_stderr_lines_say_who_and_how_severe():
    buffer = io.StringIO()
    handler = logs.make_handler("kexechibd", buffer, {})
    import logging

    record = logging.LogRecord(
        "kexechibd.x", logging.WARNING, __file__, 1, "disk %s", ("full",), None
    )
    handler.handle(record)
    assert buffer.getvalue() == "kexechibd: WARNING: disk full\n"


def test_the_watchdog_is_fed_only_when_systemd_asks_this_process():
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000"}).watchdog_interval == 30
    other = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    assert Notifier(other).watchdog_interval is None
    assert Notifier({}).watchdog_interval is None
    assert not Notifier({}).enabled


@pytest.mark.parametrize(
    "image, code, said",
    [
        (None, 0, "kexechibd can hibernate\n"),
        ("earlier-boot", 1, "kexechibd cannot hibernate: a valid image of an earlier boot is"),
    ],
)
async def test_check_prints_whether_hibernate_would_work_and_touches_nothing(
    tmp_path, image, code, said
):
    if image is not None:
        make_image(tmp_path / "image", boot_id=image)
    conf = tmp_path / "kexechibd.conf"
    conf.write_text(f"[image]\nlocation = {tmp_path / 'image'}\n")
    result = await run(
        [sys.executable, str(LAUNCHER), "--", "--check", f"--config={conf}"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == code, result.stderr
    assert result.stdout.startswith(said)
    assert "resume started" not in result.stderr
