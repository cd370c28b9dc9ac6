"""kexechibctl's one exit-status table, for every command: the help text and
kexechibctl(8) print it, and each command returns one of these."""

from __future__ import annotations

OK = 0
FAILURE = 1
USAGE = 2
NOT_RESUMABLE = 3
INTERRUPTED = 130
# As a shell reports a command killed by SIGPIPE (128 + 13): the reader of
# standard output went away (`kexechibctl status | head -3`).
CLOSED_PIPE = 141

TABLE: tuple[tuple[int, str], ...] = (
    (
        OK,
        "success; can-hibernate: the answer is yes or challenge; inspect, image info, "
        "image verify: the image is there and resumable",
    ),
    (
        FAILURE,
        "the daemon refused or failed (its message is printed), or it is not running; "
        "the image is absent, damaged or unreadable; can-hibernate: the answer is no or na",
    ),
    (USAGE, "bad command-line usage"),
    (
        NOT_RESUMABLE,
        "inspect, image info, image verify: the image reads, but it is not resumable "
        "(consumed or invalid)",
    ),
    (INTERRUPTED, "interrupted by a second Ctrl-C"),
    (CLOSED_PIPE, "standard output was closed early (e.g. by head); nothing more is said"),
)


def for_image_state(state: str | None) -> int:
    """The status of a command that reports on an image: ``state`` is its
    resume state, None when there is no image or it cannot be read."""
    if state is None:
        return FAILURE
    return OK if state == "committed" else NOT_RESUMABLE


def describe(width: int = 78) -> str:
    """The table as the help's epilog prints it."""
    import textwrap

    lines = ["exit status:"]
    for code, meaning in TABLE:
        wrapped = textwrap.wrap(meaning, width - 7)
        lines.append(f"  {code:<4} {wrapped[0]}")
        lines += [f"       {more}" for more in wrapped[1:]]
    return "\n".join(lines)
