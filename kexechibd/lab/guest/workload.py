"""A's workload in the lab's cycle tests (kexechibd/lab/guest/cycle.sh).

A counter in this process's memory, written to the tmpfs file /tmp/counter
every 0.1 s, and a buffer of random bytes whose SHA-256 it remembers. On
SIGUSR1 it writes `/tmp/workload.check`: `pid=… counter=… memory=intact`
(or `changed`), so the script can tell that the very same process, with the
same memory, goes on counting after a hibernate cycle.
"""

import hashlib
import os
import signal
import time

SIZE = 8 << 20
data = bytearray(os.urandom(SIZE))
digest = hashlib.sha256(data).digest()
counter = 0


def write(path: str, text: str) -> None:
    with open(path + ".new", "w") as f:
        f.write(text)
    os.replace(path + ".new", path)


def check(signum: int, frame: object) -> None:
    memory = "intact" if hashlib.sha256(data).digest() == digest else "changed"
    write("/tmp/workload.check", f"pid={os.getpid()} counter={counter} memory={memory}\n")


signal.signal(signal.SIGUSR1, check)
while True:
    counter += 1
    write("/tmp/counter", f"{counter}\n")
    time.sleep(0.1)
