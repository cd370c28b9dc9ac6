"""Fixtures: a real bus (and the real polkitd on it) per test session, the
daemon on that bus per test, clients of every kind.

Users the tests call as (all exist on every Debian system):
  root    — never asked: the daemon authorizes root itself;
  nobody  — polkit's defaults apply (no session: ``allow_any``);
  daemon  — the test rules say YES to every org.kexechib1 action;
  bin     — the test rules say NO;
  sys     — stands for a user of the active local session (which these
            tests cannot make): YES to org.kexechib1.hibernate, as its
            allow_active does, and the defaults for the rest (which are
            the same for the active session: auth_admin_keep).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageFlag, MessageType
from dbus_next.message import Message

from kexechibd import busutil
from kexechibd.busapi import BUS_NAME, INTERFACE, OBJECT_PATH
from kexechibd.config import Config
from kexechibd.daemon.main import Daemon, Runtime
from tests.dbus.buses import (
    LOGIND_BUS_CONF,
    POLICY_CONF,
    POLKIT_BUS_CONF,
    SYSTEMD_BUS_CONF,
    Polkitd,
    TestBus,
    polkitd_unavailable,
)
from tests.dbus.scripted_engine import ScriptedEngine

REPO = Path(__file__).resolve().parents[2]

TEST_RULES = """\
polkit.addRule(function(action, subject) {
    // test_real_logind.py: "nobody" holds a sleep block inhibitor.
    if (action.id == "org.freedesktop.login1.inhibit-block-sleep" && subject.user == "nobody")
        return polkit.Result.YES;
    if (action.id.indexOf("org.kexechib1.") != 0)
        return polkit.Result.NOT_HANDLED;
    if (subject.user == "daemon")
        return polkit.Result.YES;
    if (subject.user == "bin")
        return polkit.Result.NO;
    if (subject.user == "sys" && action.id == "org.kexechib1.hibernate")
        return polkit.Result.YES;
    return polkit.Result.NOT_HANDLED;
});
"""

BOOT_ID = "boot-of-this-test"


# ------------------------------------------------------------------ buses


@pytest.fixture(scope="session")
def system_bus() -> Iterator[TestBus]:
    """The system bus of these tests: Debian's default policy, our policy
    file, polkit's (so the real polkitd can own its name), logind's and
    systemd's (so the real logind, and the stand-ins for logind and systemd,
    of test_logind.py and test_real_logind.py can)."""
    bus = TestBus(includes=(POLICY_CONF, POLKIT_BUS_CONF, LOGIND_BUS_CONF, SYSTEMD_BUS_CONF))
    yield bus
    bus.stop()
    assert bus.proc.returncode is not None


@pytest.fixture(scope="session")
def polkitd(system_bus: TestBus) -> Iterator[Polkitd | None]:
    """The real polkitd on the test bus, or None (``real_polkit`` skips
    with the reason) where it cannot run."""
    if polkitd_unavailable():
        yield None
        return
    daemon = Polkitd(system_bus, TEST_RULES)
    yield daemon
    daemon.stop()
    assert daemon.proc.returncode is not None


@pytest.fixture
def real_polkit(polkitd: Polkitd | None) -> Polkitd:
    if polkitd is None:
        unavailable = (
            f"the real polkitd cannot run here: {polkitd_unavailable()}; "
            "test_authorization.py covers the same logic against a stand-in Authority"
        )
        pytest.skip(reason=unavailable)
    return polkitd


# ------------------------------------------------------------------ engine


@pytest.fixture
def engine(tmp_path: Path) -> ScriptedEngine:
    """THE engine of the D-Bus tests (the one place to swap in the real one)."""
    return ScriptedEngine(image_location=str(tmp_path / "image"))


# ------------------------------------------------------------------ daemon


@dataclass
class RunningDaemon:
    daemon: Daemon
    task: asyncio.Task[int]
    engine: Any  # the ScriptedEngine, or the real engine in test_real_engine.py

    @property
    def manager(self):  # type: ignore[no-untyped-def]
        assert self.daemon.manager is not None
        return self.daemon.manager


async def start_daemon(
    bus: TestBus,
    engine: Any,
    cmdline: str = "ro quiet",
    boot_id: str = BOOT_ID,
    config: Config | None = None,
    sleep_conf: Path | None = None,
) -> RunningDaemon:
    daemon = Daemon(
        Runtime(engine, cmdline, boot_id),
        bus.address,
        handle_signals=False,
        config=config,
        sleep_conf=sleep_conf,
    )
    task = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        outcome = task.result() if task.done() else "timeout"
        raise RuntimeError(f"the daemon did not start: {outcome}")
    return RunningDaemon(daemon, task, engine)


async def stop_daemon(running: RunningDaemon) -> int:
    if isinstance(running.engine, ScriptedEngine):
        running.engine.gate.set()
        running.engine.jump_gate.set()
    running.daemon.stop()
    return await asyncio.wait_for(running.task, 30)


@pytest.fixture
async def daemon(
    system_bus: TestBus, polkitd: Polkitd | None, engine: ScriptedEngine
) -> AsyncIterator[RunningDaemon]:
    running = await start_daemon(system_bus, engine)
    yield running
    assert await stop_daemon(running) == 0
    assert not system_bus.has_owner(BUS_NAME), "the daemon must release its name"


# ------------------------------------------------------------------ clients


@pytest.fixture
async def client(system_bus: TestBus) -> AsyncIterator[MessageBus]:
    """A dbus-next client connection (as root)."""
    bus = await busutil.connect(system_bus.address)
    yield bus
    await busutil.close(bus)


def manager_call(
    member: str, signature: str = "", body: Sequence[object] = (), *, interactive: bool = False
) -> Message:
    return Message(
        destination=BUS_NAME,
        path=OBJECT_PATH,
        interface=INTERFACE,
        member=member,
        signature=signature,
        body=list(body),
        flags=MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if interactive else MessageFlag.NONE,
    )


async def call(
    bus: MessageBus,
    member: str,
    signature: str = "",
    body: Sequence[object] = (),
    *,
    interactive: bool = False,
) -> list[object]:
    """Call a Manager method; return the reply body or raise ``CallError``."""
    reply = await bus.call(manager_call(member, signature, body, interactive=interactive))
    if reply.message_type == MessageType.ERROR:
        raise CallError(reply.error_name, reply.body[0] if reply.body else "")
    return list(reply.body)


async def get_property(bus: MessageBus, name: str) -> object:
    reply = await bus.call(
        Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface="org.freedesktop.DBus.Properties",
            member="Get",
            signature="ss",
            body=[INTERFACE, name],
        )
    )
    if reply.message_type == MessageType.ERROR:
        raise CallError(reply.error_name, reply.body[0] if reply.body else "")
    return reply.body[0].value


class CallError(Exception):
    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


def as_user(user: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run as ``user`` (setpriv drops every id and group)."""
    if user == "root":
        return list(argv)
    entry = pwd.getpwnam(user)
    return [
        "setpriv",
        f"--reuid={entry.pw_uid}",
        f"--regid={entry.pw_gid}",
        "--clear-groups",
        "--",
        *argv,
    ]


async def run(
    argv: Sequence[str],
    *,
    user: str = "root",
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> Completed:
    """Run a client program without blocking the loop the daemon serves on."""
    proc = await asyncio.create_subprocess_exec(
        *as_user(user, argv),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Completed(proc.returncode, out.decode(), err.decode())


# Debian's python3 with python3-dbus-next: what an installed kexechibctl runs
# on, and the interpreter unprivileged callers can execute (this venv's may
# live under a root-only directory).
SYSTEM_PYTHON = "/usr/bin/python3"


def ctl_argv(bus: TestBus, *args: str, unprivileged: bool = False) -> list[str]:
    """kexechibctl from this checkout, talking to the test bus."""
    python = SYSTEM_PYTHON if unprivileged else sys.executable
    return [python, "-m", "kexechibd.ctl", f"--bus={bus.address}", *args]


def system_python_unavailable() -> str:
    import subprocess

    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import dbus_next"], capture_output=True, check=False
    )
    return (
        ""
        if probe.returncode == 0
        else f"{SYSTEM_PYTHON} cannot import dbus_next (Debian package python3-dbus-next)"
    )


@pytest.fixture
def ctl_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
    return env


@pytest.fixture(scope="session")
def package_for_anyone() -> Iterator[Path]:
    """A copy of the package that any user may read: kexechibctl runs as
    nobody in some tests, and a checkout may sit where nobody cannot look
    (a clone inside ``mktemp -d``, mode 0700)."""
    top = Path(tempfile.mkdtemp(prefix="kexechib-ctl-"))
    try:
        top.chmod(0o755)
        shutil.copytree(
            REPO / "kexechibd", top / "kexechibd", ignore=shutil.ignore_patterns("__pycache__")
        )
        for path in top.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def anyone_ctl_env(ctl_env: dict[str, str], package_for_anyone: Path) -> dict[str, str]:
    """``ctl_env`` for a kexechibctl that runs as an unprivileged user."""
    return {**ctl_env, "PYTHONPATH": str(package_for_anyone)}


class Signals:
    """Every signal org.kexechib1 sends, as a client on the bus sees it."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def subscribe(self, bus: MessageBus) -> Signals:
        reply = await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[f"type='signal',sender='{BUS_NAME}'"],
            )
        )
        assert reply.message_type == MessageType.METHOD_RETURN

        def handler(msg: Message) -> None:
            if msg.message_type == MessageType.SIGNAL and msg.path == OBJECT_PATH:
                self.messages.append(msg)

        bus.add_message_handler(handler)
        return self

    @property
    def changes(self) -> list[dict[str, object]]:
        """The ``changed`` dicts of every PropertiesChanged, in order."""
        return [
            {k: v.value for k, v in m.body[1].items()}
            for m in self.messages
            if m.member == "PropertiesChanged" and m.body[0] == INTERFACE
        ]

    def values(self, name: str) -> list[object]:
        return [c[name] for c in self.changes if name in c]

    @property
    def prepare_for_hibernate(self) -> list[bool]:
        return [m.body[0] for m in self.messages if m.member == "PrepareForHibernate"]


@pytest.fixture
async def signals(client: MessageBus) -> Signals:
    return await Signals().subscribe(client)


async def eventually(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Wait (serving the loop) until ``predicate()`` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def wait_thread_event(event, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for a threading.Event without blocking the loop."""
    await eventually(event.is_set, timeout)


def gdbus(method: str, *args: str, interactive: bool = False) -> list[str]:
    """A ``gdbus call`` of ``method`` (full name) on our object; ``--system``
    honours DBUS_SYSTEM_BUS_ADDRESS."""
    return [
        "gdbus",
        "call",
        "--system",
        *(["--interactive"] if interactive else []),
        "--dest",
        "org.kexechib1",
        "--object-path",
        "/org/kexechib1",
        "--method",
        method,
        *args,
    ]


def busctl(bus: TestBus, *args: str) -> list[str]:
    return ["busctl", f"--address={bus.address}", *args]
