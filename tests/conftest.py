import os

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
