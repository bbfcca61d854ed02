import importlib
import os
import sys

import pytest
import torch

# Without CUDA, triton's kernels run only in its interpreter, and triton reads TRITON_INTERPRET
# when each function (its own library's included) is decorated: set it before anything imports
# triton, so the kernel tests (tests/test_kernels.py) can run wherever triton is installed.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """Same thread count in forked children and here, so float reductions agree bit for bit."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


KERNELS = "samplers.kernels.triton_ops"


@pytest.fixture(scope="module")
def interpreter():
    """Kernels defined under TRITON_INTERPRET=1. triton reads it when a function is decorated,
    its own library functions included, so it must be set before triton is first imported."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (it comes with the [dev] extra)")
    if "triton" in sys.modules and not _interpreting():
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set")
    patch = pytest.MonkeyPatch()
    patch.setenv("TRITON_INTERPRET", "1")
    package = importlib.import_module("samplers.kernels")
    sys.modules.pop(KERNELS, None)
    yield importlib.import_module(KERNELS)
    sys.modules.pop(KERNELS, None)  # later CUDA tests compile the kernels for real
    if hasattr(package, "triton_ops"):
        delattr(package, "triton_ops")
    patch.undo()


def _interpreting() -> bool:
    import triton.language as tl

    return type(tl.zeros).__name__ == "InterpretedFunction"
