"""The kernel interface: ABI (``abi``), the ``Kernel`` protocol (``api``), backends."""

from kexechibd.kernel.backends import open_kernel

__all__ = ["open_kernel"]
