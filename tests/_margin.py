"""pytest plugin: fail float32/float16 comparisons that pass by less than a margin.

A tolerance that holds on this machine with a ratio error / allowed of 0.6 may fail on a CPU
whose kernels round differently. With `-p _margin` every `torch.allclose` and
`torch.testing.assert_close` called from a test file is measured; a passing comparison of
reduced-precision tensors that uses more than SCOREKIT_MARGIN (default 0.25) of its tolerance is
reported and fails the session. Negative assertions (`assert not allclose`) are not affected:
they compare beyond the tolerance.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

MARGIN = float(os.environ.get("SCOREKIT_MARGIN", "0.25"))
_LOW = (torch.float32, torch.float16, torch.bfloat16)
_allclose, _assert_close = torch.allclose, torch.testing.assert_close
_found: list[str] = []


def _from_test() -> str | None:
    frame = sys._getframe(2)
    path = frame.f_code.co_filename
    return f"{os.path.basename(path)}:{frame.f_lineno}" if "/tests/" in path else None


def _check(where: str | None, a, b, rtol: float, atol: float) -> None:
    if where is None:
        return
    try:
        _measure(where, torch.as_tensor(a), torch.as_tensor(b), rtol, atol)
    except (RuntimeError, TypeError, ValueError):
        pass  # the comparison itself reports what is wrong with its inputs


def _measure(where: str, a, b, rtol: float, atol: float) -> None:
    if a.dtype not in _LOW and b.dtype not in _LOW:
        return
    a, b = torch.broadcast_tensors(a.detach().double().cpu(), b.detach().double().cpu())
    finite = torch.isfinite(a) & torch.isfinite(b)
    if not bool(finite.any()):
        return
    allowed = (atol + rtol * b.abs())[finite].clamp_min(1e-300)
    ratio = float(((a - b).abs()[finite] / allowed).max())
    if MARGIN < ratio <= 1:
        _found.append(f"{where}: error is {ratio:.2f} of the tolerance")


def allclose(a, b, rtol=1e-5, atol=1e-8, equal_nan=False):
    _check(_from_test(), a, b, rtol, atol)
    return _allclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan)


def assert_close(actual, expected, *args, rtol=None, atol=None, **kwargs):
    where = _from_test()
    if rtol is None or atol is None:
        from torch.testing._comparison import default_tolerances

        r, a = default_tolerances(torch.as_tensor(actual), torch.as_tensor(expected))
        rtol, atol = (r if rtol is None else rtol), (a if atol is None else atol)
    _check(where, actual, expected, rtol, atol)
    return _assert_close(actual, expected, *args, rtol=rtol, atol=atol, **kwargs)


torch.allclose = allclose
torch.testing.assert_close = assert_close


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _found:
        print(f"\nfloat32 comparisons within {MARGIN:g} of failing:\n  " + "\n  ".join(_found))
        session.exitstatus = 1
