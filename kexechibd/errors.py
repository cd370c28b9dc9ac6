"""Errors the daemon reports, each with its D-Bus name (DESIGN §5).

A ``KernelError`` (``kexechibd.kernel.abi``) that reaches the D-Bus layer is
reported as ``KernelRefused`` with the kernel's own explanation.
"""

from __future__ import annotations

ERROR_PREFIX = "org.kexechib1.Error."


class KexechibError(Exception):
    """Base: ``dbus_name`` is what a D-Bus caller sees."""

    name = "Failed"

    @property
    def dbus_name(self) -> str:
        return ERROR_PREFIX + self.name


class Failed(KexechibError):
    name = "Failed"


class NotSupported(KexechibError):
    """The kernel, configuration or role cannot do what was asked."""

    name = "NotSupported"


class Busy(KexechibError):
    """Another operation is running."""

    name = "Busy"


class BadImage(KexechibError):
    """An image is missing, corrupt, truncated, foreign or unsafe."""

    name = "BadImage"


class KernelRefused(KexechibError):
    """The kernel refused a kexec/reboot request."""

    name = "KernelRefused"


class Cancelled(KexechibError):
    """The operation was cancelled before the point of no return."""

    name = "Cancelled"


class InvalidOption(KexechibError):
    """An option is unknown or has the wrong type or value."""

    name = "InvalidOption"


class NoPeer(KexechibError):
    """``JumpBack`` with no kernel to jump to."""

    name = "NoPeer"


class NotRunning(KexechibError):
    """``Cancel`` with no operation in progress."""

    name = "NotRunning"


class TooLate(KexechibError):
    """``Cancel`` after the point of no return."""

    name = "TooLate"


class ConfigError(KexechibError):
    """The configuration file is invalid."""

    name = "ConfigError"
