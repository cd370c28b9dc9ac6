"""Values as people read them, next to the exact ones scripts read:
``created: 1765072800 (2025-12-07 02:00:00 UTC)``,
``stored-bytes: 1610612736 (1.5 GiB)``."""

from __future__ import annotations

import datetime

# Fields of an image's description (kexechibctl inspect, image info) that
# hold a unix time or a number of bytes.
TIMES = frozenset({"created"})
SIZES = frozenset({"stored-bytes", "chunk-size", "page-size"})

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def size(value: int) -> str:
    """``value`` bytes in binary units (as the K, M, G of sizes given to
    kexechibd are), to three significant digits."""
    if abs(value) < 1024:
        return f"{value} bytes"
    scaled = float(value)
    for unit in _UNITS:
        scaled /= 1024
        if abs(scaled) < 1024 or unit == _UNITS[-1]:
            break
    return f"{scaled:.3g} {unit}"


def time(epoch: float) -> str:
    """A unix time as local date and time, with the zone."""
    local = datetime.datetime.fromtimestamp(epoch).astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S %Z")


def annotate(key: str, value: object) -> str:
    """``value`` as printed for the field ``key``: the exact value, and for
    times and sizes the human reading in parentheses."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if key in TIMES:
        exact = f"{value:.0f}" if isinstance(value, float) and value.is_integer() else str(value)
        return f"{exact} ({time(value)})"
    if key in SIZES and isinstance(value, int):
        return f"{value} ({size(value)})"
    return str(value)
