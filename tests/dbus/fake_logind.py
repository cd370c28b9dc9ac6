"""Stand-ins for systemd-logind and systemd on the tests' private bus.

This host does not run systemd as PID 1, so the real logind cannot run here
(it needs systemd's manager on the bus to start hibernate.target).  The
stand-in does what systemd 252's logind does for ``HibernateWithFlags``
(src/login/logind-dbus.c: method_do_shutdown_or_sleep): refuse when a block
inhibitor holds and ``SD_LOGIND_ROOT_CHECK_INHIBITORS`` is set, else emit
``PrepareForSleep(true)``, reply, run the job — here what our
systemd-hibernate.service drop-in runs, ``kexechibctl --no-ask-password
hibernate --direct`` — and emit ``PrepareForSleep(false)`` when it has
ended, whatever its result.  It owns ``org.freedesktop.login1`` under the
real logind bus policy (/usr/share/dbus-1/system.d/org.freedesktop.login1.conf).
What the real logind decides by itself is tested in tests/dbus/test_real_logind.py
(it runs here, but cannot start units); all of it in the Debian guest
(tests/lab/test_logind_guest.py).
"""

# No `from __future__ import annotations`: dbus-next reads the D-Bus
# signatures from the annotations, which must stay string constants.
import asyncio
from collections.abc import Sequence

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import NameFlag, PropertyAccess, RequestNameReply
from dbus_next.errors import DBusError
from dbus_next.service import ServiceInterface, dbus_property, method, signal

ROOT_CHECK_INHIBITORS = 1


async def run_command(argv: Sequence[str], env: dict[str, str]) -> tuple[int, str]:
    """Run a unit's command: its exit status and its output."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


class FakeLogind(ServiceInterface):
    def __init__(self, job: Sequence[str], env: dict[str, str]) -> None:
        super().__init__("org.freedesktop.login1.Manager")
        self.job = list(job)  # the drop-in's ExecStart=, or [] for a job that does nothing
        self.env = env
        self.inhibited_by = ""  # a block inhibitor's "who"
        self.calls: list[tuple[str, int]] = []
        self.job_status: int | None = None
        self.job_output = ""
        self._tasks: set[asyncio.Task[None]] = set()

    @method()
    def HibernateWithFlags(self, flags: "t"):  # type: ignore[no-untyped-def,name-defined]  # noqa: F821
        self.calls.append(("HibernateWithFlags", flags))
        if self.inhibited_by and flags & ROOT_CHECK_INHIBITORS:
            raise DBusError(
                "org.freedesktop.DBus.Error.AccessDenied",
                "Access denied to root due to active block inhibitor",
            )
        self.PrepareForSleep(True)
        task = asyncio.get_running_loop().create_task(self._run_job())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @signal()
    def PrepareForSleep(self, start: bool) -> "b":  # type: ignore[name-defined]  # noqa: F821
        return start

    async def _run_job(self) -> None:
        await asyncio.sleep(0.05)  # the reply leaves first, as logind's does
        if self.job:
            self.job_status, self.job_output = await run_command(self.job, self.env)
        self.PrepareForSleep(False)

    async def settle(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks)


async def serve(address: str, logind: FakeLogind) -> MessageBus:
    bus = await MessageBus(bus_address=address).connect()
    bus.export("/org/freedesktop/login1", logind)
    reply = await bus.request_name("org.freedesktop.login1", NameFlag.DO_NOT_QUEUE)
    assert reply == RequestNameReply.PRIMARY_OWNER
    return bus


class LoadedUnit(ServiceInterface):
    """The one thing the real logind asks systemd before answering
    CanHibernate ``yes`` (logind-dbus.c, method_can_shutdown_or_sleep →
    unit_load_state): hibernate.target's LoadState.  A stand-in for
    org.freedesktop.systemd1, which does not run on this host."""

    def __init__(self) -> None:
        super().__init__("org.freedesktop.systemd1.Unit")

    @dbus_property(access=PropertyAccess.READ)
    def LoadState(self) -> "s":  # type: ignore[name-defined]  # noqa: F821
        return "loaded"


async def serve_loaded_units(address: str, *units: str) -> MessageBus:
    """org.freedesktop.systemd1 with ``units`` loaded (unit names escaped as
    systemd's bus paths escape them: ``hibernate_2etarget``)."""
    return await serve_systemd(address, None, *units)


class FakeSystemdManager(ServiceInterface):
    """What the real logind asks of systemd to hibernate (logind-dbus.c,
    execute_shutdown_or_sleep and match_job_removed): ``StartUnit`` of
    hibernate.target, answered with a job, and ``JobRemoved`` for it when
    the job has ended.  The job runs ``commands`` one after another, as
    systemd runs systemd-hibernate.service's ExecStartPre=, ExecStart= and
    ExecStopPost= (a failing ExecStart= still gets its ExecStopPost=)."""

    def __init__(self, commands: Sequence[tuple[Sequence[str], bool]], env: dict[str, str]) -> None:
        super().__init__("org.freedesktop.systemd1.Manager")
        self.commands = [(list(argv), ignore) for argv, ignore in commands]
        self.env = env
        self.started: list[tuple[str, str]] = []
        self.outputs: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @method()
    def StartUnit(self, name: "s", mode: "s") -> "o":  # type: ignore[name-defined]  # noqa: F821
        self.started.append((name, mode))
        job_id = len(self.started)
        path = f"/org/freedesktop/systemd1/job/{job_id}"
        task = asyncio.get_running_loop().create_task(self._run(job_id, path, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return path

    @signal()
    def JobRemoved(self, job_id: int, path: str, unit: str, result: str) -> "uoss":  # type: ignore[name-defined]  # noqa: F821
        return [job_id, path, unit, result]

    async def _run(self, job_id: int, path: str, unit: str) -> None:
        await asyncio.sleep(0.05)  # StartUnit's reply first
        result = "done"
        for argv, ignore_failure in self.commands:
            status, output = await run_command(argv, self.env)
            self.outputs.append(output)
            if status != 0 and not ignore_failure and result == "done":
                result = "failed"
        self.JobRemoved(job_id, path, unit, result)

    async def settle(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks)


async def serve_systemd(
    address: str, manager: FakeSystemdManager | None, *units: str
) -> MessageBus:
    """org.freedesktop.systemd1: ``units`` loaded, and ``manager`` (if any)
    at /org/freedesktop/systemd1."""
    bus = await MessageBus(bus_address=address).connect()
    for unit in units:
        bus.export(f"/org/freedesktop/systemd1/unit/{unit}", LoadedUnit())
    if manager is not None:
        bus.export("/org/freedesktop/systemd1", manager)
    reply = await bus.request_name("org.freedesktop.systemd1", NameFlag.DO_NOT_QUEUE)
    assert reply == RequestNameReply.PRIMARY_OWNER
    return bus
