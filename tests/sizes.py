"""Byte sizes the tests count in: one home instead of a ``MIB = 1 << 20`` in
every file.  Not a test module: pytest does not collect it."""

from __future__ import annotations

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
