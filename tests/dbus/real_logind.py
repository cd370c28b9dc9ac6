"""The real systemd-logind (Debian 12's, systemd 252) on the tests' private
bus, for what it decides by itself: CanHibernate, CanHybridSleep,
CanSuspendThenHibernate from sleep.conf (``can_sleep()`` reads it on every
call).

It runs in a private mount namespace (``unshare``), where:
- our shipped ``sleep.conf.d/10-kexechib.conf`` is in
  ``/usr/lib/systemd/sleep.conf.d`` (an overlay on /usr/lib/systemd: the
  host's directory is never written);
- ``/run/systemd`` is a fresh tmpfs whose ``sleep.conf.d`` is a directory of
  the test's, where a kexechibd of the test writes its verdict;
- ``/sys/power`` is a directory of the test's saying what a kernel with
  hibernation says (this host's kernel has none: its /sys/power/state is
  empty and /sys/power/disk absent): ``state`` = ``disk``, ``disk`` =
  ``[platform] shutdown reboot suspend``;
- ``/etc/systemd/logind.conf`` ignores every key and reserves no VT, so the
  test's logind never acts on this machine's buttons or consoles.
``SYSTEMD_BYPASS_HIBERNATION_MEMORY_CHECK=1`` as our logind drop-in sets.
Nothing it could start exists on this bus (no org.freedesktop.systemd1):
a Hibernate that got through would fail at StartUnit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from kexechibd.privatebus import PrivateBus, _wait, stop_process
from kexechibd.sleepconf import NAME

REPO = Path(__file__).resolve().parents[2]
LOGIND = Path("/usr/lib/systemd/systemd-logind")
SHIPPED = REPO / "systemd/sleep.conf.d" / NAME
QUIET_LOGIND_CONF = """\
[Login]
NAutoVTs=0
ReserveVT=0
HandlePowerKey=ignore
HandleSuspendKey=ignore
HandleHibernateKey=ignore
HandleLidSwitch=ignore
HandleLidSwitchExternalPower=ignore
HandleLidSwitchDocked=ignore
HandleRebootKey=ignore
IdleAction=ignore
"""


def real_logind_unavailable() -> str:
    if not LOGIND.exists():
        return f"{LOGIND} is not installed (Debian package systemd)"
    if os.geteuid() != 0:
        return "the test's logind needs root (a private mount namespace)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "this kernel has no overlayfs"
    return ""


class RealLogind:
    def __init__(self, bus: PrivateBus) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kexechib-logind-"))
        self.runtime_dir = self.dir / "sleep.conf.d"  # what kexechibd writes into
        power, upper, work, conf = (self.dir / n for n in ("power", "upper", "work", "conf"))
        for d in (self.runtime_dir, power, upper / "sleep.conf.d", work):
            d.mkdir(parents=True)
        (power / "state").write_text("disk\n")
        (power / "disk").write_text("[platform] shutdown reboot suspend\n")
        shutil.copy(SHIPPED, upper / "sleep.conf.d" / NAME)
        conf.write_text(QUIET_LOGIND_CONF)
        script = (
            f"mount -t overlay overlay -o lowerdir=/usr/lib/systemd,upperdir={upper},"
            f"workdir={work} /usr/lib/systemd && "
            "mount -t tmpfs -o mode=0755 tmpfs /run/systemd && "
            "mkdir /run/systemd/sleep.conf.d && "
            f"mount --bind {self.runtime_dir} /run/systemd/sleep.conf.d && "
            f"mount --bind {power} /sys/power && "
            f"mount --bind {conf} /etc/systemd/logind.conf && "
            f"exec {LOGIND}"
        )
        env = {
            **bus.env(),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SYSTEMD_BYPASS_HIBERNATION_MEMORY_CHECK": "1",
            "SYSTEMD_LOG_LEVEL": "debug",
        }
        self.log = open(self.dir / "logind.log", "wb")  # noqa: SIM115 - lives with logind
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait(
                lambda: bus.has_owner("org.freedesktop.login1") or self.proc.poll() is not None,
                15,
                "systemd-logind start",
            )
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-logind exited: {self.output()}")
        except BaseException:
            self.stop()
            raise

    def output(self) -> str:
        self.log.flush()
        return (self.dir / "logind.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
