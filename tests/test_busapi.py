"""kexechibctl finds the daemon on the bus through kexechibd.busapi, never by
importing the daemon (imports flow from the daemon and the CLI down)."""

from __future__ import annotations

import subprocess
import sys


def test_kexechibctl_loads_no_module_of_the_daemon():
    probe = (
        "import sys, kexechibd.ctl.main, kexechibd.ctl.client; "
        "print(sorted(m for m in sys.modules if m.startswith('kexechibd.daemon')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert loaded == "[]\n"
