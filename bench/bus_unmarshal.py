"""How long dbus-next 0.2.3 and kexechibd's guarded unmarshaller take over a
call carrying N empty strings (signature ``as``, issue 14's attack), read from
memory, and the process's peak RSS after each (run each in its own process:
``python bench/bus_unmarshal.py guarded|dbus-next [N]``)."""

from __future__ import annotations

import io
import resource
import struct
import sys
import time

from dbus_next._private.unmarshaller import Unmarshaller
from dbus_next.message import Message

from kexechibd.daemon import busutil
from kexechibd.daemon.service import BUS_NAME, INTERFACE, OBJECT_PATH, admit


def empty_strings(count: int) -> bytes:
    head = bytes(
        Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface=INTERFACE,
            member="Hibernate",
            signature="as",
            body=[[]],
            serial=1,
        )._marshall()
    )[:-4]
    body = struct.pack("<I", 8 * count - 3) + b"\0" * (8 * count - 3)
    return head[:4] + struct.pack("<I", len(body)) + head[8:] + body


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
