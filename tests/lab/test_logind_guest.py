"""logind in charge, in the Debian guest (systemd 252 as PID 1, the real
logind, dbus and polkit; kexechibd/lab/debian.py of the debguest branch).

What the host's tests cannot show (tests/dbus/test_logind.py uses a
stand-in logind): logind's own CanHibernate/CanHybridSleep answers from our
sleep.conf drop-ins, its refusal under a block inhibitor, and a whole
hibernation through logind — `org.freedesktop.login1.Manager.Hibernate(false)`
from a client, PrepareForSleep true then false seen by a listener, the
system-sleep hook run with `pre hibernate` and `post hibernate` — in
checkpoint mode ([saver] mode = checkpoint), so that B saves A and jumps
back within one boot of the guest (the poweroff/resume cycle is issue 12
point 6's test).

The answers come from guest/debian/logind-answers.sh, run in the boot that
tests/lab/test_debian.py checks (conftest.py's `debian_booted`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kexechibd.lab import GuestResult, debian, new_workdir, run_guest

pytestmark = pytest.mark.lab

LOGIND = "org.freedesktop.login1 /org/freedesktop/login1 org.freedesktop.login1.Manager"

# A hook and a listener, then a client's Hibernate(false) through logind.
CYCLE = rf"""
. /usr/lib/kexechib-lab/lab.sh
cat >/usr/lib/systemd/system-sleep/50-kexechib-lab <<'EOF'
#!/bin/sh
echo "hook $1 $2 action=$SYSTEMD_SLEEP_ACTION at=$(date +%s.%N)" >>/var/log/kexechib-lab-hook
EOF
chmod 0755 /usr/lib/systemd/system-sleep/50-kexechib-lab
cat >/tmp/listen.py <<'EOF'
import asyncio, time
from dbus_next.aio import MessageBus
from dbus_next import BusType
async def main():
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    node = await bus.introspect("org.freedesktop.login1", "/org/freedesktop/login1")
    proxy = bus.get_proxy_object("org.freedesktop.login1", "/org/freedesktop/login1", node)
    manager = proxy.get_interface("org.freedesktop.login1.Manager")
    done = asyncio.Event()
    def on(start):
        with open("/var/log/kexechib-lab-sleep", "a") as f:
            f.write(f"PrepareForSleep {{str(start).lower()}} at={{time.time():.6f}}\n")
        if not start:
            done.set()
    manager.on_prepare_for_sleep(on)
    open("/run/listening", "w").close()
    await done.wait()
asyncio.run(main())
EOF
python3 /tmp/listen.py &
listener=$!
while [ ! -e /run/listening ]; do sleep 0.2; done
busctl call {LOGIND} Hibernate b false
say "deb-called rc=$?"
for i in $(seq 600); do kill -0 $listener 2>/dev/null || break; sleep 1; done
say "deb-listener seen=$(sed 's/^PrepareForSleep \([a-z]*\) .*/\1/' /var/log/kexechib-lab-sleep | paste -sd, -)"
say "deb-hooks seen=$(sed 's/^hook \([a-z]*\) \([a-z-]*\) action=\([a-z-]*\) .*/\1:\2:\3/' /var/log/kexechib-lab-hook | paste -sd, -)"
# Order: the post hook ran before PrepareForSleep(false) left logind.
post=$(sed -n 's/^hook post .* at=//p' /var/log/kexechib-lab-hook)
false_at=$(sed -n 's/^PrepareForSleep false at=//p' /var/log/kexechib-lab-sleep)
say "deb-order post_before_false=$(python3 -c "print(int($post < $false_at))")"
say "deb-kexechib lasterror=$(kexechibctl status | sed -n 's/^LastError: *//p' | tr ' ' '_')" \
	"cycles=$(journalctl -b -u kexechibd.service -o cat | grep -c 'back in A')"
"""  # noqa: E501 - shell lines


def _fields(result: GuestResult, kind: str) -> dict[str, str]:
    marker = result.marker(kind)
    assert marker is not None, result.describe()
    return dict(marker.fields)


@pytest.fixture(scope="module")
def answers(debian_booted: GuestResult) -> GuestResult:
    return debian_booted


@pytest.fixture(scope="module")
def through_logind(lab: Path) -> Iterator[GuestResult]:
    workdir = new_workdir("debian-logind-cycle")
    config = debian.debian_config().replace("mode = poweroff", "mode = checkpoint")
    disk = debian.debian_disk(workdir, lab, config=config)
    yield run_guest(debian.debian_guest(disk, CYCLE, kernel=lab, timeout=900), workdir / "qemu")


def test_kexechibd_told_logind_at_boot_and_logind_offers_hibernate(answers: GuestResult) -> None:
    assert _fields(answers, "deb-verdict") == {"file": "yes", "allow": "yes", "kexechib": "yes"}
    assert _fields(answers, "deb-can")["hibernate"] == "yes"


def test_logind_offers_no_hybrid_sleep_nor_suspend_then_hibernate(answers: GuestResult) -> None:
    can = _fields(answers, "deb-can")
    assert (can["hybrid"], can["s2h"]) == ("na", "na")
    assert _fields(answers, "deb-hybrid") == {"refused": "yes"}
    assert int(_fields(answers, "deb-hybrid-direct")["said"]) >= 1


def test_can_hibernate_is_na_while_kexechibd_would_refuse(answers: GuestResult) -> None:
    assert _fields(answers, "deb-refusing") == {"allow": "no", "logind": "na", "kexechib": "na"}
    assert _fields(answers, "deb-restored") == {"allow": "yes", "logind": "yes"}


def test_a_block_inhibitor_refuses_and_nothing_happens(answers: GuestResult) -> None:
    assert _fields(answers, "deb-inhibited") == {"rc": "1", "denied": "yes", "started": "0"}


def test_a_clients_hibernate_goes_through_logind_and_comes_back(
    through_logind: GuestResult,
) -> None:
    assert _fields(through_logind, "deb-called") == {"rc": "0"}
    kexechib = _fields(through_logind, "deb-kexechib")
    assert kexechib == {"lasterror": "", "cycles": "1"}, through_logind.describe()


def test_a_listener_sees_prepare_for_sleep_true_then_false(through_logind: GuestResult) -> None:
    assert _fields(through_logind, "deb-listener") == {"seen": "true,false"}


def test_the_sleep_hooks_run_pre_and_post_hibernate_before_prepare_for_sleep_false(
    through_logind: GuestResult,
) -> None:
    hooks = _fields(through_logind, "deb-hooks")
    assert hooks == {"seen": "pre:hibernate:hibernate,post:hibernate:hibernate"}
    assert _fields(through_logind, "deb-order") == {"post_before_false": "1"}
