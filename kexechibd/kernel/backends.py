"""Opening the kernel backend the configuration names (DESIGN §2.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kexechibd.errors import ConfigError
from kexechibd.kernel.api import Kernel

if TYPE_CHECKING:
    from kexechibd.config import Config


def open_kernel(config: Config) -> Kernel:
    """``linux``: the running kernel, behind the safety guard; ``model``: the
    running kernel of the model machine in ``[daemon] model_dir``."""
    if config.daemon.backend == "linux":
        from kexechibd.kernel.linux import LinuxKernel

        return LinuxKernel(enable_real_kexec=config.kexec.enable_real_kexec)
    if config.daemon.backend == "model":
        from kexechibd.model.kernel import ModelKernel

        if not (config.daemon.model_dir / "state.json").exists():
            raise ConfigError(
                f"no model machine in {config.daemon.model_dir}; create one with "
                "`python -m kexechibd.model create DIR` or set [daemon] model_dir"
            )
        return ModelKernel(config.daemon.model_dir)
    raise ConfigError(f"unknown backend {config.daemon.backend!r}; use linux or model")
