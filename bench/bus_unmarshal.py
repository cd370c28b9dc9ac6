"""How long dbus-next 0.2.3 and kexechibd's guarded unmarshaller take over a
call carrying N empty strings (signature ``as``, issue 14's attack), read from
memory, and the process's peak RSS after each (run each in its own process:
``python -m bench.bus_unmarshal guarded|dbus-next [N]``)."""

from __future__ import annotations

import io
import resource
import sys
import time

from dbus_next._private.unmarshaller import Unmarshaller

from kexechibd import busutil
from kexechibd.daemon.routing import admit
from tests.dbus.fuzz_client import empty_strings


def main() -> None:
    which = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 4_000_000
    data = empty_strings(count)
    stream = io.BufferedReader(io.BytesIO(data))  # type: ignore[arg-type]
    reader = (
        busutil._GuardedUnmarshaller(stream, None, admit)
        if which == "guarded"
        else Unmarshaller(stream, None)
    )
    start = time.perf_counter()
    reader.unmarshall()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{which}: {len(data) / 1e6:.0f} MB call decoded in {elapsed:.3f} s; peak RSS {peak:.0f} MB"
    )


if __name__ == "__main__":
    main()
