"""The kernel interface: ABI (``abi``), the ``Kernel`` protocol (``api``) and
the Linux backend (``linux``).  Which backend runs is the daemon's choice, at
its start (``kexechibd.daemon.backend``): this package imports neither the
configuration nor the machine model."""
