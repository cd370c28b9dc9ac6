"""What logind may offer: the sleep.conf drop-in kexechibd keeps in /run.

systemd-logind (252) answers ``CanHibernate`` and accepts ``Hibernate`` from
its own checks (``can_sleep()`` in src/shared/sleep-config.c), which know
nothing of kexechibd.  Among them is ``AllowHibernation=`` of sleep.conf,
which logind reads afresh on *every* ``CanHibernate``/``Hibernate`` call
(``can_sleep()`` → ``parse_sleep_config()``): ``no`` gives ``na`` and a
refusal.  So kexechibd says what logind may offer through that setting:

- the package ships ``/usr/lib/systemd/sleep.conf.d/10-kexechib.conf``
  (``AllowHibernation=no``): until kexechibd has checked, logind offers no
  hibernation — a machine where kexechibd never ran is never offered one
  that would fail;
- kexechibd writes a file of the same name in ``/run/systemd/sleep.conf.d``,
  which hides the shipped one (systemd reads one file per name, /etc before
  /run before /usr/lib): ``AllowHibernation=yes`` when its own
  ``CanHibernate`` would not be ``na``, ``no`` (with the reason) otherwise.

hybrid-sleep and suspend-then-hibernate stay refused in both files: they
would need the kernel's own hibernation (DESIGN §6).

This module: the text (pure) and its writer (atomic, 0644).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

NAME = "10-kexechib.conf"
RUNTIME_DIR = Path("/run/systemd/sleep.conf.d")
RUNTIME_PATH = RUNTIME_DIR / NAME

_REFUSED_ALWAYS = """\
# hybrid-sleep and suspend-then-hibernate are refused: both write the kernel's
# own hibernation image (to swap), which kexechibd replaces; kexechibd cannot
# suspend after saving.  Use `systemctl hibernate` or `systemctl suspend`.
AllowHybridSleep=no
AllowSuspendThenHibernate=no
"""


def sleep_conf_text(unavailable: str) -> str:
    """The runtime drop-in for kexechibd's verdict: ``unavailable`` is why
    it would refuse ``Hibernate`` ('' when it would not)."""
    head = (
        "# Written by kexechibd; it replaces /usr/lib/systemd/sleep.conf.d/"
        f"{NAME} and is\n# rewritten whenever kexechibd checks (at boot, at its start, "
        "after each\n# operation, on CanHibernate).  Do not edit: override it with a "
        "later file\n# in /etc/systemd/sleep.conf.d/ instead.\n[Sleep]\n"
    )
    if unavailable:
        reason = " ".join(unavailable.split())  # one comment line, whatever the text
        verdict = f"# kexechibd cannot hibernate: {reason}\nAllowHibernation=no\n"
    else:
        verdict = "# kexechibd can hibernate this system.\nAllowHibernation=yes\n"
    return head + verdict + _REFUSED_ALWAYS


def write_sleep_conf(text: str, path: Path = RUNTIME_PATH) -> bool:
    """Replace ``path`` with ``text`` atomically (0644, as logind reads it
    as root but anyone may read why).  Returns False when it already said
    so (nothing written)."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o755)  # not the daemon's umask: systemd's directory
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            os.fchmod(f.fileno(), 0o644)  # the daemon's umask is 0077
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True
