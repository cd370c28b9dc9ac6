"""A's workload in the lab's cycle tests (kexechibd/lab/guest/cycle.sh, and
the Debian guest's user service kexechib-workload.service).

A counter in this process's memory, written to the tmpfs file `<dir>/counter`
every 0.1 s, and a buffer of random bytes whose SHA-256 it remembers. On
SIGUSR1 it writes `<dir>/workload.check`: `pid=… counter=… memory=intact`
(or `changed`), so the script can tell that the very same process, with the
same memory, goes on counting after a hibernate cycle. `<dir>` is /tmp
unless `--dir` names another (created); its `pid` file names the process.

The random buffer is also the workload's secret: `<dir>/needles` holds, in
hex and comma-separated, NEEDLES pieces of it, each inside one page of the
buffer, so the host can search a powered-off guest's raw disk for them
(the Debian guest's encrypted cycle, kexechibd/lab/debian_luks.py): random
bytes stay whole in a compressed image, so any image of this memory written
in the clear holds some of them.

With `--append FILE` it also keeps FILE open and appends the counter to it
as a line every 0.1 s (flushed, not synced): a file on the root filesystem
being written across the cycle. It then also writes a 1 MiB random file
`<dir>/canary` at its start and reports `canary=intact|changed` and
`appended=<lines written>` in the check.

For the benchmarks' fill (bench/swsusp.py), `--random-mib N` makes the
random buffer N MiB (default 8) and `--anon-mib N` adds N MiB of anonymous
memory that compresses as a program's heap does (each page a different
line of text, repeated), both checked with the buffer's digest.
"""

import argparse
import hashlib
import os
import signal
import time

parser = argparse.ArgumentParser()
parser.add_argument("--dir", default="/tmp")
parser.add_argument("--append")
parser.add_argument("--random-mib", type=int, default=8)
parser.add_argument("--anon-mib", type=int, default=0)
args = parser.parse_args()
os.makedirs(args.dir, exist_ok=True)

SIZE = args.random_mib << 20
data = bytearray(os.urandom(SIZE))
heap = bytearray(args.anon_mib << 20)
for n in range(len(heap) // 4096):
    heap[n * 4096 : (n + 1) * 4096] = (f"page {n} of the heap: a counter, names; " * 120)[
        :4096
    ].encode()


def memory_digest() -> bytes:
    h = hashlib.sha256(data)
    h.update(heap)
    return h.digest()


digest = memory_digest()
NEEDLES, NEEDLE = 16, 32  # pieces a 512 KiB apart, 32 bytes each, in one page
starts = (k * (SIZE // NEEDLES) + 2048 for k in range(NEEDLES))
needles = ",".join(data[at : at + NEEDLE].hex() for at in starts)
counter = 0
appended = 0
log = open(args.append, "a", buffering=1) if args.append else None  # noqa: SIM115
canary_digest = b""
if log is not None:
    canary = os.urandom(1 << 20)
    canary_digest = hashlib.sha256(canary).digest()
    with open(os.path.join(args.dir, "canary"), "wb") as f:
        f.write(canary)


def path(name: str) -> str:
    return os.path.join(args.dir, name)


def write(name: str, text: str) -> None:
    with open(path(name) + ".new", "w") as f:
        f.write(text)
    os.replace(path(name) + ".new", path(name))


def check(signum: int, frame: object) -> None:
    memory = "intact" if memory_digest() == digest else "changed"
    extra = ""
    if log is not None:
        with open(path("canary"), "rb") as f:
            same = hashlib.sha256(f.read()).digest() == canary_digest
        extra = f" canary={'intact' if same else 'changed'} appended={appended}"
    write("workload.check", f"pid={os.getpid()} counter={counter} memory={memory}{extra}\n")


signal.signal(signal.SIGUSR1, check)
write("needles", needles + "\n")
write("pid", f"{os.getpid()}\n")
while True:
    counter += 1
    write("counter", f"{counter}\n")
    if log is not None:
        log.write(f"{counter}\n")
        appended += 1
    time.sleep(0.1)
