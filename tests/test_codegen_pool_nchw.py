"""Pooling over an unblocked NCHW float tensor (the int8 build's ResNet stem max pool runs so):
the generic template vectorizes the output row by the lane count under the window loops,
and the result equals numpy's pooling exactly."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import te, tirx, topi

from pfcompile.codegen.templates.base import Hardware
from pfcompile.codegen.templates.generic import GenericTemplate

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2})
HW = Hardware(fp32_lanes=8, cores=2)


def _np_pool(x: np.ndarray, kind: str, k: int, s: int, p: int) -> np.ndarray:
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
    oh = (x.shape[2] + 2 * p - k) // s + 1
    ow = (x.shape[3] + 2 * p - k) // s + 1
    win = np.stack([xp[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s]
                    for i in range(k) for j in range(k)])
    return win.max(0) if kind == "max" else win.sum(0, dtype=np.float32) / np.float32(k * k)


def _vector_extents(func: tirx.PrimFunc) -> list[int]:
    """Extents of the vectorized loops, read from the printed TIR."""
    return [int(v) for v in re.findall(r"T\.vectorized\((\d+)\)", func.script())]


@pytest.mark.parametrize(("kind", "hw", "k", "s", "p"), [
    ("max", 32, 3, 2, 1),    # ResNet's stem pool: output rows of 16 = two vectors of 8
    ("avg", 16, 2, 2, 0),
    ("max", 14, 3, 2, 1),    # rows of 7: no lane split, the old schedule
])
def test_nchw_pool_vectorizes_rows_and_is_exact(kind, hw, k, s, p):
    x = te.placeholder((1, 8, hw, hw), "float32", name="x")
    y = topi.nn.pool2d(x, (k, k), (s, s), (1, 1), (p, p, p, p), kind, layout="NCHW",
                       count_include_pad=True)
    func = GenericTemplate().apply(te.create_prim_func([x, y]), None, None, HW)
    ow = (hw + 2 * p - k) // s + 1
    vec = _vector_extents(func)
    if ow % 8 == 0:
        assert vec and set(vec) == {8}, func.script()  # one vector of outputs per register
    ex = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)
    xv = np.random.default_rng(0).standard_normal((1, 8, hw, hw)).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros((1, 8, ow, ow), np.float32))
    ex.mod["main"](tvm.runtime.tensor(xv), out)
    want = _np_pool(xv, kind, k, s, p)
    if kind == "max":
        np.testing.assert_array_equal(out.numpy(), want)
    else:
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-6, atol=1e-6)
