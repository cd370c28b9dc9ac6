"""The one compression policy: which codecs exist, the levels each accepts
and its default level.

The configuration (``[image] compression/level``), Hibernate's options, the
command line and the image writer all ask this module, so a combination A
accepts is one B's writer accepts: a bad one is refused in A, before
anything is loaded, instead of after a whole jump.  Pure: no I/O, no codec
library (``kexechibd.image.codec`` does the compressing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Levels:
    """The levels a codec accepts, ``low..high``, and the one it uses when
    none is given."""

    low: int
    high: int
    default: int

    def __str__(self) -> str:
        if self.low == self.high:
            return f"{self.low} only"
        return f"{self.low}..{self.high} (default {self.default})"

    def refusal(self, name: str, level: int) -> str:
        if self.low == self.high:
            return f"{name} has no levels: its level is {self.low} only, not {level}"
        return f"{name} levels go from {self.low} to {self.high}, not {level}"


# zstd's negative levels are its fast modes (zstandard goes lower, but below
# -7 the ratio collapses for memory images); lz4's frame levels stop at 16,
# 0 being its fast mode; "none" stores chunks as they are and has no levels.
CODECS: dict[str, Levels] = {
    "zstd": Levels(-7, 22, 3),
    "lz4": Levels(0, 16, 0),
    "none": Levels(0, 0, 0),
}
NAMES: tuple[str, ...] = tuple(CODECS)
DEFAULT = "zstd"


class PolicyError(ValueError):
    """A codec that does not exist, or a level its codec does not accept;
    the message names what is allowed."""


def levels(name: str) -> Levels:
    try:
        return CODECS[name]
    except KeyError:
        raise PolicyError(f"compression {name!r} is not one of {', '.join(NAMES)}") from None


def resolve(name: str, level: int | None) -> int:
    """The level ``name`` compresses at: ``level``, or the codec's default
    when None.  Raises ``PolicyError`` naming the allowed range."""
    allowed = levels(name)
    if level is None:
        return allowed.default
    if isinstance(level, bool) or not isinstance(level, int):
        raise PolicyError(f"the level must be a whole number, not {level!r}")
    if not allowed.low <= level <= allowed.high:
        raise PolicyError(allowed.refusal(name, level))
    return level


def summary() -> str:
    """Every codec's levels, as the documentation and messages write them."""
    return "; ".join(f"{name} {CODECS[name]}" for name in NAMES)


def overlay(defaults: Mapping[str, object], given: Mapping[str, object]) -> dict[str, object]:
    """``given`` options over ``defaults`` (the configured compression and
    level), keeping a level with its codec: a caller who names another codec
    and no level gets that codec's default level, not the configured codec's."""
    merged = {**defaults, **given}
    other_codec = given.get("compression", defaults.get("compression")) != defaults.get(
        "compression"
    )
    if other_codec and "level" not in given:
        merged.pop("level", None)
    return merged
