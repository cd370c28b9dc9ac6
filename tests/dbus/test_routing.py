"""Who answers a method call, decided from its header alone
(``routing.route``), and what a caller's mistakes may cost the log
(``mistakes.MistakeLog``).  Pure: no bus."""

from __future__ import annotations

import logging

import pytest

from kexechibd.busapi import INTERFACE, OBJECT_PATH
from kexechibd.daemon.mistakes import MistakeLog, shown
from kexechibd.daemon.routing import MAX_BODY, Refusal, Route, route

ERR = "org.freedesktop.DBus.Error."


@pytest.mark.parametrize(
    "path, interface, member, signature, answer",
    [
        (OBJECT_PATH, INTERFACE, "Hibernate", "a{sv}", Route(INTERFACE, "Hibernate")),
        (OBJECT_PATH, None, "Inspect", "s", Route(INTERFACE, "Inspect")),
        (OBJECT_PATH, None, "GetAll", "s", Route("org.freedesktop.DBus.Properties", "GetAll")),
        (
            "/any/path",
            "org.freedesktop.DBus.Peer",
            "Ping",
            "",
            Route("org.freedesktop.DBus.Peer", "Ping"),
        ),
        (
            "/",
            "org.freedesktop.DBus.Introspectable",
            "Introspect",
            "",
            Route("org.freedesktop.DBus.Introspectable", "Introspect"),
        ),
        (
            "/org",
            "org.freedesktop.DBus.Introspectable",
            "Introspect",
            "",
            Route("org.freedesktop.DBus.Introspectable", "Introspect"),
        ),
        (OBJECT_PATH, INTERFACE, "Hibernate", "as", ERR + "InvalidArgs"),
        (OBJECT_PATH, "org.freedesktop.DBus.Properties", "Get", "s", ERR + "InvalidArgs"),
        (OBJECT_PATH, INTERFACE, "Suspend", "", ERR + "UnknownMethod"),
        (OBJECT_PATH, None, "Suspend", "", ERR + "UnknownMethod"),
        (
            OBJECT_PATH,
            "org.freedesktop.DBus.ObjectManager",
            "GetManagedObjects",
            "",
            ERR + "UnknownInterface",
        ),
        ("/org/kexechib1/x", INTERFACE, "Cancel", "", ERR + "UnknownObject"),
        (
            "/org/kexechib",
            "org.freedesktop.DBus.Introspectable",
            "Introspect",
            "",
            ERR + "UnknownObject",
        ),
        ("/", "org.freedesktop.DBus.Properties", "GetAll", "s", ERR + "UnknownObject"),
    ],
)
def test_a_call_is_routed_or_refused_by_its_header(path, interface, member, signature, answer):
    got = route(path, interface, member, signature)
    assert (got if isinstance(got, Route) else got.error) == answer


def test_a_body_over_the_limit_is_limits_exceeded_whatever_the_method():
    got = route(OBJECT_PATH, INTERFACE, "Inspect", "s", MAX_BODY + 1)
    assert isinstance(got, Refusal) and got.error == ERR + "LimitsExceeded"
    assert isinstance(route(OBJECT_PATH, INTERFACE, "Inspect", "s", MAX_BODY), Route)


def test_a_refusal_quotes_the_caller_short():
    got = route(OBJECT_PATH, INTERFACE, "X" * 10_000, "")
    assert isinstance(got, Refusal) and len(got.text) < 300


def test_shown_cuts_long_strings_and_says_how_long():
    assert shown("abc") == "'abc'"
    assert shown("x" * 1000).endswith("…(1002 chars)")
    assert len(shown("x" * 1000)) < 100


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_sender_per_window_then_the_count_of_the_rest(caplog):
    clock = Clock()
    mistakes = MistakeLog(logging.getLogger("t"), window=60, clock=clock)
    with caplog.at_level(logging.INFO, "t"):
        assert mistakes.note(":1.5", "InvalidArgs")
        assert not any(mistakes.note(":1.5", "InvalidArgs") for _ in range(99))
        assert mistakes.note(":1.6", "UnknownMethod")
        clock.now += 60
        assert mistakes.note(":1.5", "InvalidArgs")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "(and 99 more since)" in lines[2]


def test_many_senders_together_are_held_to_the_burst(caplog):
    clock = Clock()
    mistakes = MistakeLog(logging.getLogger("t"), window=60, burst=5, clock=clock)
    with caplog.at_level(logging.INFO, "t"):
        for n in range(1000):
            mistakes.note(f":1.{n}", "AccessDenied")
    assert len(caplog.records) == 5


def test_the_senders_remembered_are_bounded():
    mistakes = MistakeLog(logging.getLogger("t"), senders=10, clock=Clock())
    for n in range(1000):
        mistakes.note(f":1.{n}", "x")
    assert len(mistakes._senders) == 10
