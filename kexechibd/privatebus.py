"""A private system-like D-Bus: a real ``dbus-daemon`` configured like
Debian's system bus (``/usr/share/dbus-1/system.conf``'s default policy,
EXTERNAL auth) that includes the policy files given — ours,
``dbus/org.kexechib1.conf``, exactly as the system bus includes it from
``/usr/share/dbus-1/system.d``.  The tests and ``make demo`` run on one; the
daemon rejects a malformed policy file at start, so starting is itself a check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLICY_CONF = REPO / "dbus" / "org.kexechib1.conf"

# The default policy of Debian's /usr/share/dbus-1/system.conf.
SYSTEM_DEFAULT_POLICY = """\
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
"""


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"{what} did not happen within {timeout} s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Terminate ``proc`` and reap it (kill if it does not go)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class PrivateBus:
    """A private system-like bus; ``address`` is what clients connect to."""

    def __init__(
        self, *, includes: tuple[Path, ...] = (POLICY_CONF,), extra_policy: str = ""
    ) -> None:
        # World-traversable, so callers running as other users (setpriv) and
        # polkitd (which drops to its own user) can reach the socket.
        self.dir = Path(tempfile.mkdtemp(prefix="kexechib-bus-"))
        self.dir.chmod(0o755)
        self.socket = self.dir / "system_bus_socket"
        self.address = f"unix:path={self.socket}"
        self.config = self.dir / "bus.conf"
        include_lines = "".join(f"  <include>{path}</include>\n" for path in includes)
        self.config.write_text(
            '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
            ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
            "<busconfig>\n"
            "  <type>system</type>\n"
            f"  <listen>{self.address}</listen>\n"
            "  <auth>EXTERNAL</auth>\n"
            f"{SYSTEM_DEFAULT_POLICY}{extra_policy}{include_lines}"
            "</busconfig>\n"
        )
        self.log = open(self.dir / "dbus-daemon.log", "wb")  # noqa: SIM115 - lives with the bus
        self.proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={self.config}", "--nofork", "--nopidfile"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait(lambda: self.socket.exists() or self.proc.poll() is not None, 10, "bus start")
            if self.proc.poll() is not None:
                raise RuntimeError(f"dbus-daemon failed: {self.output()}")
            self.socket.chmod(0o777)
        except BaseException:
            self.stop()
            raise

    def output(self) -> str:
        self.log.flush()
        return (self.dir / "dbus-daemon.log").read_text(errors="replace")

    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.address}

    def has_owner(self, name: str) -> bool:
        result = subprocess.run(
            ["busctl", f"--address={self.address}", "status", name],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
