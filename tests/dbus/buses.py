"""Real D-Bus and polkit daemons for the tests.

``TestBus`` runs a real ``dbus-daemon`` configured like Debian's system bus
(``/usr/share/dbus-1/system.conf``'s default policy, EXTERNAL auth) that
includes *our* bus policy file, ``dbus/org.kexechib1.conf``, exactly as the
system bus includes it from ``/usr/share/dbus-1/system.d``.  The daemon
rejects a malformed policy file at start, so starting is itself a check.

``Polkitd`` runs the real ``polkitd`` on such a bus.  It reads its actions
from ``/usr/share/polkit-1/actions`` and its rules from fixed directories,
so it runs in a private mount namespace (``unshare``) where our
``org.kexechib1.policy`` and the test's rules are bind-mounted over those
directories; the host's polkit configuration is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from kexechibd.privatebus import SYSTEM_DEFAULT_POLICY, PrivateBus, _wait, stop_process

REPO = Path(__file__).resolve().parents[2]
POLICY_CONF = REPO / "dbus" / "org.kexechib1.conf"
POLKIT_POLICY = REPO / "dbus" / "org.kexechib1.policy"
POLKIT_BUS_CONF = Path("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")
# systemd's (Debian package systemd): who may own org.freedesktop.login1 and call it.
LOGIND_BUS_CONF = Path("/usr/share/dbus-1/system.d/org.freedesktop.login1.conf")
SYSTEMD_BUS_CONF = Path("/usr/share/dbus-1/system.d/org.freedesktop.systemd1.conf")
POLKITD = Path("/usr/lib/polkit-1/polkitd")
# systemd's (Debian package systemd), for the real logind of test_real_logind.py.
LOGIND_POLKIT_POLICY = Path("/usr/share/polkit-1/actions/org.freedesktop.login1.policy")

__all__ = ["SYSTEM_DEFAULT_POLICY", "Polkitd", "TestBus", "polkitd_unavailable", "stop_process"]


class TestBus(PrivateBus):
    """The tests' private system bus (``kexechibd.privatebus``)."""

    __test__ = False  # not a test class


class Polkitd:
    """The real polkitd on ``bus`` with our actions and ``rules`` (JavaScript)."""

    def __init__(self, bus: TestBus, rules: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kexechib-polkit-"))
        self.dir.chmod(0o755)
        actions, local_rules, no_rules = (self.dir / n for n in ("actions", "rules", "empty"))
        for d in (actions, local_rules, no_rules):
            d.mkdir()
            d.chmod(0o755)
        shutil.copy(POLKIT_POLICY, actions)
        if LOGIND_POLKIT_POLICY.exists():
            shutil.copy(LOGIND_POLKIT_POLICY, actions)
        (local_rules / "50-kexechib-test.rules").write_text(rules)
        for f in (*actions.iterdir(), *local_rules.iterdir()):
            f.chmod(0o644)
        script = (
            f"mount --bind {actions} /usr/share/polkit-1/actions && "
            f"mount --bind {local_rules} /etc/polkit-1/rules.d && "
            f"mount --bind {no_rules} /usr/share/polkit-1/rules.d && "
            f"exec {POLKITD} --no-debug"
        )
        self.log = open(self.dir / "polkitd.log", "wb")  # noqa: SIM115 - lives with polkitd
        # unshare execs sh, which execs polkitd: one process, this pid.
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            env=bus.env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait(
                lambda: bus.has_owner("org.freedesktop.PolicyKit1") or self.proc.poll() is not None,
                15,
                "polkitd start",
            )
            if self.proc.poll() is not None:
                raise RuntimeError(f"polkitd exited: {self.output()}")
        except BaseException:
            self.stop()
            raise

    def output(self) -> str:
        self.log.flush()
        return (self.dir / "polkitd.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def polkitd_unavailable() -> str:
    """Why the real polkitd cannot run here ('' if it can)."""
    if not POLKITD.exists():
        return f"{POLKITD} is not installed (Debian package polkitd)"
    if os.geteuid() != 0:
        return "polkitd's test instance needs root (a private mount namespace)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        return f"cannot create a mount namespace here: {probe.stderr.decode().strip()}"
    return ""
