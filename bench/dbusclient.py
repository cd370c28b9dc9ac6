"""The latency client: ``python -m bench.dbusclient ADDRESS N [--while-saving]``.

One connection to the bus at ADDRESS; N rounds of three calls, one after
the other, each timed from send to reply: ``CanHibernate``, the ``State``
property (``org.freedesktop.DBus.Properties.Get``) of org.kexechib1, and
``org.freedesktop.DBus.GetId`` — answered by the bus itself, so it is the
floor: the bus and this client, without our daemon.  Interleaving the
three puts them under the same load.  With ``--while-saving`` the rounds
stop as soon as the daemon's State is no longer ``saving``, and only rounds
that saw ``saving`` count.  Prints one JSON line: milliseconds per call, and
each call as the ``busctl`` command that makes the same call (``calls``),
so that the report can name exactly what was timed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import BusType, MessageType
from dbus_next.message import Message

NAME = "org.kexechib1"
PATH = "/org/kexechib1"
IFACE = "org.kexechib1.Manager"


def messages() -> dict[str, Message]:
    return {
        "CanHibernate": Message(
            destination=NAME, path=PATH, interface=IFACE, member="CanHibernate"
        ),
        "Get State": Message(
            destination=NAME,
            path=PATH,
            interface="org.freedesktop.DBus.Properties",
            member="Get",
            signature="ss",
            body=[IFACE, "State"],
        ),
        "GetId": Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="GetId",
        ),
    }


def busctl(address: str, msg: Message) -> str:
    """The ``busctl`` command line that sends the same method call."""
    argv = ["busctl", f"--address={address}", "call", msg.destination, msg.path,
            msg.interface, msg.member]  # fmt: skip
    if msg.signature:
        argv += [msg.signature, *(str(arg) for arg in msg.body)]
    return shlex.join(str(a) for a in argv)


async def measure(address: str, rounds: int, while_saving: bool) -> dict[str, object]:
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    times: dict[str, list[float]] = {k: [] for k in messages()}
    answers: dict[str, str] = {}
    started = time.perf_counter()
    try:
        for _ in range(rounds):
            round_times = {}
            state = ""
            for kind, msg in messages().items():
                t = time.perf_counter()
                reply = await bus.call(msg)
                round_times[kind] = (time.perf_counter() - t) * 1e3
                assert reply is not None
                if reply.message_type is MessageType.ERROR:
                    raise RuntimeError(f"{kind}: {reply.error_name}: {reply.body}")
                value = reply.body[0]
                answers[kind] = str(getattr(value, "value", value))
                if kind == "Get State":
                    state = answers[kind]
            if while_saving and state != "saving":
                break
            for kind, ms in round_times.items():
                times[kind].append(ms)
    finally:
        bus.disconnect()
    return {
        "ms": times,
        "answers": answers,
        "seconds": time.perf_counter() - started,
        "calls": {kind: busctl(address, msg) for kind, msg in messages().items()},
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dbusclient")
    parser.add_argument("address")
    parser.add_argument("rounds", type=int)
    parser.add_argument("--while-saving", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.address, args.rounds, args.while_saving))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
