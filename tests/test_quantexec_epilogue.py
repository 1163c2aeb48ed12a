"""The requantising epilogue's TIR expression (``kernels.requant_expr``, rounding by
``round_small``) equals its numpy twin ``requant.requantize_ref`` bit for bit on rounding
ties, saturation on both sides, extreme accumulators and random values, vectorised over
8 lanes as in the kernels, for uint8 and int8 outputs."""

import numpy as np
import pytest
import tvm
from tvm import te

from pfcompile.quantexec.kernels import requant_expr
from pfcompile.quantexec.requant import requantize_ref
from pfcompile.targets import host_arch

pytestmark = pytest.mark.skipif(host_arch() != "x86_64", reason="compiled for an x86-64 host")

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2})


def _epilogue(n: int, qmin: int, qmax: int, dtype: str):
    acc = te.placeholder((n,), "int32", name="acc")
    scale = te.placeholder((n,), "float32", name="scale")
    offset = te.placeholder((n,), "float32", name="offset")
    y = te.compute((n,), lambda i: requant_expr(acc[i], scale[i], offset[i], qmin, qmax, dtype),
                   name="y")
    sch = tvm.s_tir.Schedule(te.create_prim_func([acc, scale, offset, y]))
    (i,) = sch.get_loops(sch.get_sblock("y"))
    _, ii = sch.split(i, [None, 8])
    sch.vectorize(ii)
    mod = tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")})
    return tvm.compile(mod, target=TARGET)


def _cases(rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    acc, scale, offset = [], [], []
    # exact ties: odd acc * 0.5 (+ an integer offset) = k + 0.5, both signs, both parities
    for a in range(-601, 602, 2):
        acc.append(a)
        scale.append(0.5)
        offset.append(float(rng.integers(-3, 4)))
    # ties from the offset: offset k + 0.5 with acc * scale integral
    for a in range(-300, 301):
        acc.append(a)
        scale.append(0.25)
        offset.append(rng.integers(-5, 6) + 0.5)
    # extremes: saturation far past either bound, int32 ends
    for a in (2**31 - 1, -(2**31), 2**30, -(2**30), 0, 1, -1):
        for m in (1e-9, 1e-3, 0.7, 3.0, 1e6):
            acc.append(a)
            scale.append(m)
            offset.append(float(rng.integers(-128, 256)))
    # random values around the output range
    k = 4000
    acc += list(rng.integers(-200000, 200000, k))
    scale += list(rng.uniform(1e-4, 2e-3, k))
    offset += list(rng.uniform(-130.0, 260.0, k))
    n = -(-len(acc) // 8) * 8
    pad = n - len(acc)
    return (np.array(acc + [0] * pad, np.int32), np.array(scale + [1.0] * pad, np.float32),
            np.array(offset + [0.0] * pad, np.float32))


@pytest.mark.parametrize("qmin,qmax,dtype", [(0, 255, "uint8"), (-128, 127, "int8"),
                                             (3, 200, "uint8"), (-100, 100, "int8")])
def test_epilogue_matches_requantize_ref(qmin, qmax, dtype):
    acc, scale, offset = _cases(np.random.default_rng(qmax - qmin))
    ex = _epilogue(acc.size, qmin, qmax, dtype)
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.zeros(acc.size, dtype), dev)
    ex["main"](*(tvm.runtime.tensor(a, dev) for a in (acc, scale, offset)), y)
    ref = requantize_ref(acc, scale, offset, qmin, qmax, axis=0)
    got = y.numpy().astype(np.int64)
    assert np.array_equal(got, ref), np.flatnonzero(got != ref)[:10]
    # the ties really are ties, and both bounds are reached
    assert (got == qmin).any() and (got == qmax).any()
    f = acc[:601].astype(np.float64) * 0.5 + offset[:601]
    assert np.all(f - np.floor(f) == 0.5)
