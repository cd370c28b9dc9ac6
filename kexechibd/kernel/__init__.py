"""The kernel interface: ABI (``abi``), the ``Kernel`` protocol (``api``), backends."""
