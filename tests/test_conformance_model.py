"""The conformance vectors (DESIGN §2.1, §2.2) against the machine model.

The same vectors run against real kernels in lab guests (tests/lab)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Capabilities
from tests.conformance.vectors import VECTORS, applicable, choose_base, features_of, run_vector
from tests.model_support import model_kernel
from tests.sizes import MIB


@pytest.fixture(scope="module")
def patched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelKernel]:
    with model_kernel(tmp_path_factory.mktemp("patched") / "m", 256 * MIB) as k:
        yield k


@pytest.fixture(scope="module")
def mainline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelKernel]:
    caps = Capabilities(staged_load=False)
    with model_kernel(tmp_path_factory.mktemp("mainline") / "m", 256 * MIB, caps) as k:
        yield k


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelKernel]:
    """A distribution kernel without CONFIG_KEXEC_JUMP (Debian 12's)."""
    caps = Capabilities(staged_load=False, kexec_jump=False)
    with model_kernel(tmp_path_factory.mktemp("stock") / "m", 256 * MIB, caps) as k:
        yield k


PATCHED = [v for v in VECTORS if applicable(v, {"jump", "staged"})]
MAINLINE = [v for v in VECTORS if applicable(v, {"jump", "mainline"})]
STOCK = [v for v in VECTORS if applicable(v, {"nojump", "mainline"})]


def test_the_profiles_match_the_model_kernels(
    patched: ModelKernel, mainline: ModelKernel, stock: ModelKernel
) -> None:
    assert features_of(patched) == {"jump", "staged"}
    assert features_of(mainline) == {"jump", "mainline"}
    assert features_of(stock) == {"nojump", "mainline"}


def test_vector_names_are_unique() -> None:
    names = [v.name for v in VECTORS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("vector", PATCHED, ids=[v.name for v in PATCHED])
def test_patched_model_kernel(patched: ModelKernel, vector) -> None:
    outcome = run_vector(patched, vector, choose_base(patched), staged=True)
    assert outcome.passed, outcome.problems


@pytest.mark.parametrize("vector", MAINLINE, ids=[v.name for v in MAINLINE])
def test_mainline_model_kernel(mainline: ModelKernel, vector) -> None:
    outcome = run_vector(mainline, vector, choose_base(mainline), staged=False)
    assert outcome.passed, outcome.problems


@pytest.mark.parametrize("vector", STOCK, ids=[v.name for v in STOCK])
def test_stock_model_kernel(stock: ModelKernel, vector) -> None:
    outcome = run_vector(stock, vector, choose_base(stock), staged=False)
    assert outcome.passed, outcome.problems
