"""The hostile caller of test_fuzz.py, run as an unprivileged user with
Debian's python3 (it imports nothing of kexechibd, so it runs from a copy
anyone may read).

    fuzz_client.py ADDRESS fuzz COUNT SEED   random calls, answers counted
    fuzz_client.py ADDRESS flood SECONDS N   large messages (N empty strings), one at a time

Prints one JSON object: what it sent and what came back.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import struct
import sys
import time
from collections import Counter

from dbus_next.aio import MessageBus
from dbus_next.constants import BusType, MessageFlag, MessageType
from dbus_next.message import Message
from dbus_next.signature import Variant

DEST = "org.kexechib1"
PATH = "/org/kexechib1"
MANAGER = "org.kexechib1.Manager"
MEMBERS = {
    MANAGER: {
        "Hibernate": "a{sv}",
        "Resume": "sa{sv}",
        "JumpBack": "",
        "Cancel": "",
        "CanHibernate": "",
        "Inspect": "s",
    },
    "org.freedesktop.DBus.Properties": {"Get": "ss", "GetAll": "s", "Set": "ssv"},
    "org.freedesktop.DBus.Peer": {"Ping": "", "GetMachineId": ""},
    "org.freedesktop.DBus.Introspectable": {"Introspect": ""},
    "org.freedesktop.DBus.ObjectManager": {"GetManagedObjects": ""},
}
PATHS = [
    "/dev/zero",
    "/proc/self/mem",
    "/sys/kernel/kexec_loaded",
    "/",
    "/etc/shadow",
    "/tmp",
    "relative/image",
    "/var/lib/kexechib/image\n",
    "",
    "/dev/null",
    "/tmp/../etc",
]
SIGNATURES = [
    "",
    "s",
    "ss",
    "a{sv}",
    "sa{sv}",
    "i",
    "as",
    "ay",
    "v",
    "(ss)",
    "a{ss}",
    "x",
    "o",
    "b",
    "ssv",
    "sss",
    "u",
    "d",
    "a{sa{sv}}",
]


def text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(PATHS)
    if roll < 0.4:
        return "x" * rng.choice([1000, 20_000, 60_000])
    if roll < 0.6:
        return rng.choice(
            [
                "State",
                "LastError",
                "Progress",
                "mode",
                "level",
                "image",
                MANAGER,
                "",
                "org.kexechib1",
                "load-only",
                "force",
            ]
        )
    return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(0, 40)))


def value(rng: random.Random, sig: str) -> object:
    if sig in "sg" or sig == "o":
        if sig == "o":
            return rng.choice(["/", "/org/kexechib1", "/dev/zero"])
        if sig == "g":
            return rng.choice(["", "s", "a{sv}"])
        return text(rng)
    if sig == "u":
        return rng.choice([0, 7, 2**32 - 1])
    if sig in "ixn":
        return rng.choice([0, 1, -1, 3, 22, 23, -8, 2**15 - 1, -(2**15)])
    if sig == "b":
        return rng.random() < 0.5
    if sig == "d":
        return rng.random()
    if sig == "v":
        inner = rng.choice(["s", "i", "x", "u", "b", "o", "as"])
        return Variant(inner, value(rng, inner))
    if sig == "as":
        return [text(rng) for _ in range(rng.randrange(0, 5))]
    if sig == "ay":
        return os.urandom(rng.randrange(0, 100))
    if sig == "a{sv}":
        return options(rng)
    if sig == "a{ss}":
        return {text(rng): text(rng)}
    if sig == "(ss)":
        return [text(rng), text(rng)]
    if sig == "a{sa{sv}}":
        return {text(rng): options(rng)}
    raise ValueError(sig)


def options(rng: random.Random) -> dict[str, Variant]:
    keys = ["mode", "compression", "level", "image", "load-only", "force", "speed"]
    out = {}
    for key in rng.sample(keys, rng.randrange(0, 4)):
        sig = rng.choice(["s", "i", "x", "u", "b", "o", "n", "t"])
        good = {
            "mode": ("s", rng.choice(["poweroff", "checkpoint", "x"])),
            "compression": ("s", rng.choice(["zstd", "lz4", "none", "gzip"])),
            "level": ("i", rng.choice([-8, 3, 20, 23])),
            "image": ("s", rng.choice(PATHS)),
        }.get(key)
        if good and rng.random() < 0.5:
            sig, val = good
        else:
            val = {"u": 7, "n": 3, "t": 5}.get(sig) if sig in "unt" else value(rng, sig)
        out[key] = Variant(sig, val)
    return out


def split(signature: str) -> list[str]:
    """Single complete types of a signature (enough for SIGNATURES)."""
    types, i = [], 0
    while i < len(signature):
        j = i
        depth = 0
        while True:
            c = signature[j]
            if c in "({":
                depth += 1
            elif c in ")}":
                depth -= 1
            j += 1
            if depth == 0 and c != "a":
                break
        types.append(signature[i:j])
        i = j
    return types


def random_call(rng: random.Random) -> Message:
    interface = rng.choice([*MEMBERS, None, "org.example.Nope"])
    known = MEMBERS.get(interface or MANAGER, {})
    if known and rng.random() < 0.8:
        member = rng.choice(list(known))
    else:
        member = rng.choice(["Suspend", "Get", "Ping", "X" * 200, "Hibernate"])
    signature = known.get(member, "") if rng.random() < 0.6 else rng.choice(SIGNATURES)
    path = PATH if rng.random() < 0.85 else rng.choice(["/", "/org", "/org/kexechib1/x", "/a/b"])
    flags = MessageFlag.NONE
    if rng.random() < 0.3:
        flags |= MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
    return Message(
        destination=DEST,
        path=path,
        interface=interface,
        member=member,
        signature=signature,
        body=[value(rng, t) for t in split(signature)],
        flags=flags,
    )


async def fuzz(address: str, count: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    calls = [random_call(rng) for _ in range(count)]
    workers = 8
    answers: Counter[str] = Counter()
    timeouts = 0
    slowest = 0.0

    async def worker(mine: list[Message]) -> None:
        nonlocal timeouts, slowest
        bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
        for msg in mine:
            start = time.monotonic()
            try:
                reply = await asyncio.wait_for(bus.call(msg), 10)
            except TimeoutError:
                timeouts += 1
                continue
            slowest = max(slowest, time.monotonic() - start)
            ok = reply.message_type == MessageType.METHOD_RETURN
            answers["return" if ok else reply.error_name] += 1
        bus.disconnect()

    await asyncio.gather(*(worker(calls[i::workers]) for i in range(workers)))
    return {
        "calls": count,
        "answered": sum(answers.values()),
        "timeouts": timeouts,
        "slowest": slowest,
        "answers": dict(answers),
    }


# ------------------------------------------------------------ flood


def raw_connection(address: str) -> socket.socket:
    """A blocking connection, authenticated and said Hello to, by hand: a
    hostile client need not use any library."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address.split("path=", 1)[1])
    uid = str(os.getuid()).encode().hex()
    sock.sendall(b"\0AUTH EXTERNAL " + uid.encode() + b"\r\n")
    assert sock.recv(4096).startswith(b"OK")
    sock.sendall(b"BEGIN\r\n")
    hello = Message(
        destination="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus",
        member="Hello",
        serial=1,
    )
    sock.sendall(hello._marshall())
    return sock


def empty_strings(count: int, serial: int = 2) -> bytes:
    """A Hibernate with ``count`` empty strings (signature 'as'; 4 million,
    32 MB, was the issue's attack), marshalled by hand: the cheapest body to
    send and, decoded, one Python object per 8 bytes."""
    head = bytes(
        Message(
            destination=DEST,
            path=PATH,
            interface=MANAGER,
            member="Hibernate",
            signature="as",
            body=[[]],  # an empty array: the body's last 4 bytes
            serial=serial,
        )._marshall()
    )[:-4]
    body = struct.pack("<I", 8 * count - 3) + b"\0" * (8 * count - 3)
    return head[:4] + struct.pack("<I", len(body)) + head[8:] + body


def big_calls(count: int) -> list[bytes]:
    """``empty_strings(count)`` and an Inspect of a path as long (the right
    signature, too long)."""
    inspect = Message(
        destination=DEST,
        path=PATH,
        interface=MANAGER,
        member="Inspect",
        signature="s",
        body=["/" + "x" * (8 * count)],
        serial=3,
    )._marshall()
    return [empty_strings(count), bytes(inspect)]


def flood(address: str, seconds: float, count: int) -> dict[str, object]:
    """Send the large calls one after another, each once the previous one
    was answered: one large message in flight at a time."""
    sock = raw_connection(address)
    sock.settimeout(30)
    messages = big_calls(count)
    sent = answered = 0
    serial = 10
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        msg = bytearray(messages[sent % len(messages)])
        struct.pack_into("<I", msg, 8, serial)
        serial += 1
        sock.sendall(msg)
        sent += 1
        if sock.recv(1 << 16):  # the error reply (and whatever came with it)
            answered += 1
    sock.close()
    return {
        "sent": sent,
        "answered": answered,
        "bytes": sum(len(messages[i % 2]) for i in range(sent)),
    }


def main() -> None:
    address, mode = sys.argv[1], sys.argv[2]
    if mode == "fuzz":
        result = asyncio.run(fuzz(address, int(sys.argv[3]), int(sys.argv[4])))
    else:
        result = flood(address, float(sys.argv[3]), int(sys.argv[4]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
