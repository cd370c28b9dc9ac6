"""Opening the kernel backend the configuration names (DESIGN §2.3).

The daemon chooses at its start; the kernel package below it knows neither
the configuration nor the machine model (tests/test_packaging.py keeps the
model optional)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kexechibd.errors import ConfigError
from kexechibd.kernel.api import Kernel

if TYPE_CHECKING:
    from kexechibd.config import Config
    from kexechibd.model.kernel import ModelKernel


def open_kernel(config: Config) -> Kernel:
    """``linux``: the running kernel, behind the safety guard; ``model``: the
    running kernel of the model machine in ``[daemon] model_dir``."""
    if config.daemon.backend == "linux":
        from kexechibd.kernel.linux import LinuxKernel

        return LinuxKernel(enable_real_kexec=config.kexec.enable_real_kexec)
    if config.daemon.backend == "model":
        model_kernel = _model_kernel()
        if not (config.daemon.model_dir / "state.json").exists():
            raise ConfigError(
                f"no model machine in {config.daemon.model_dir}; create one with "
                "`python -m kexechibd.model create DIR` or set [daemon] model_dir"
            )
        return model_kernel(config.daemon.model_dir)
    raise ConfigError(f"unknown backend {config.daemon.backend!r}; use linux or model")


# The machine model serves the tests: the Debian package and the wheel leave
# it out (docs/DEVELOPING.md, "What is installed").
MODEL_MISSING = (
    "the machine model is not installed; backend = model is for development checkouts "
    "(`pip install -e .` of the source tree)"
)


def _model_kernel() -> type[ModelKernel]:
    """The model's kernel class, or a ConfigError where the model is not
    installed (only the model's own absence: a model that fails to import for
    another reason shows that error)."""
    try:
        from kexechibd.model.kernel import ModelKernel
    except ModuleNotFoundError as e:
        if e.name is not None and (e.name + ".").startswith("kexechibd.model."):
            raise ConfigError(MODEL_MISSING) from e
        raise
    return ModelKernel
