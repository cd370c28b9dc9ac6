"""kexechibd: hibernation with kexec jump (see docs/DESIGN.md)."""

__version__ = "0.1.0"
