"""Each integer conv template equals the numpy int64 reference bit for bit, in every
activation layout it takes (NCHW / NCHW8c in and out), requantised or float output."""

from dataclasses import replace

import numpy as np
import pytest
import tvm

from pfcompile.quantexec import x86
from pfcompile.quantexec.kernel_choice import _depthwise_conv, _generic_conv, _identity
from pfcompile.quantexec.kernels import QConvSpec
from pfcompile.quantexec.refconv import kernel_case
from pfcompile.targets import cpu_flags, host_arch

pytestmark = pytest.mark.skipif(host_arch() != "x86_64",
                                reason="the x86 integer templates run on an x86-64 CPU only")

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2})
HAS_VNNI = "avx512_vnni" in cpu_flags()
VNNI_TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v4", "mattr": ["+avx512vnni"],
                                 "num-cores": 2})

TEMPLATES = {  # name: (scheduled func for a spec, weight packing, VNNI?)
    "avx2": (x86.avx2_conv_func, x86.pack_weight_avx2, False),
    "vnni": (x86.vnni_conv_func, x86.pack_weight_vnni, True),
    "avx2-dw": (x86.avx2_depthwise_func, x86.pack_weight_dw_avx2, False),
    "vnni-dw": (x86.vnni_depthwise_func, x86.pack_weight_dw_vnni, True),
    "generic": (_generic_conv, _identity, False),
    "depthwise": (_depthwise_conv, _identity, False),
}

B = "NCHW8c"
CASES = [
    # c, h, oc, k, stride, pad (t,l,b,r), dil, groups, x dtype, zx, zy, qmin, qmax, template,
    # layouts (x, y)
    (6, 9, 12, 3, 1, (1, 1, 1, 1), 1, 1, "uint8", 7, 3, 3, 255, "avx2", "NCHW", "NCHW"),
    (5, 11, 10, 3, 2, (1, 0, 1, 2), 1, 1, "int8", -4, 2, -128, 127, "avx2", "NCHW", "NCHW"),
    (3, 13, 16, 7, 2, (3, 3, 3, 3), 1, 1, "uint8", 128, 0, 0, 255, "avx2", "NCHW", B),
    (8, 10, 8, 3, 1, (2, 2, 2, 2), 2, 1, "uint8", 1, 9, 9, 200, "avx2", B, "NCHW"),
    (16, 9, 24, 1, 1, (0, 0, 0, 0), 1, 1, "uint8", 7, 3, 3, 255, "avx2", B, B),
    (24, 7, 16, 3, 2, (1, 1, 1, 1), 1, 1, "int8", 5, -2, -128, 100, "avx2", B, B),
    (8, 10, 8, 1, 1, (0, 0, 0, 0), 1, 1, "int8", 0, 0, -128, 127, "generic", "NCHW", "NCHW"),
    (6, 9, 12, 3, 1, (1, 1, 1, 1), 1, 2, "uint8", 5, 4, 4, 255, "generic", "NCHW", "NCHW"),
    (16, 16, 16, 3, 1, (1, 1, 1, 1), 1, 16, "uint8", 11, 0, 0, 255, "depthwise", "NCHW", "NCHW"),
    (8, 15, 8, 3, 2, (1, 1, 1, 1), 1, 8, "int8", -3, 1, -128, 127, "depthwise", "NCHW", "NCHW"),
    (24, 11, 24, 3, 1, (1, 1, 1, 1), 1, 24, "uint8", 7, 3, 3, 255, "avx2-dw", B, B),
    (16, 12, 16, 3, 2, (0, 0, 1, 1), 1, 16, "uint8", 9, 0, 0, 255, "avx2-dw", "NCHW", B),
    (12, 9, 12, 5, 1, (2, 2, 2, 2), 1, 12, "int8", -3, 1, -128, 127, "avx2-dw", "NCHW", "NCHW"),
    (16, 13, 16, 5, 2, (2, 2, 2, 2), 1, 16, "uint8", 200, 5, 5, 250, "avx2-dw", B, "NCHW"),
    (6, 9, 12, 3, 1, (1, 1, 1, 1), 1, 1, "uint8", 7, 3, 3, 255, "vnni", "NCHW", "NCHW"),
    (3, 13, 16, 7, 2, (3, 3, 3, 3), 1, 1, "uint8", 128, 0, 0, 255, "vnni", "NCHW", B),
    (16, 9, 24, 1, 1, (0, 0, 0, 0), 1, 1, "uint8", 7, 3, 3, 255, "vnni", B, B),
    (24, 7, 32, 3, 2, (1, 1, 1, 1), 1, 1, "uint8", 0, 128, 0, 255, "vnni", B, "NCHW"),
    (24, 11, 24, 3, 1, (1, 1, 1, 1), 1, 24, "uint8", 7, 3, 3, 255, "vnni-dw", B, B),
    (16, 12, 16, 3, 2, (0, 0, 1, 1), 1, 16, "uint8", 9, 0, 0, 255, "vnni-dw", "NCHW", B),
    (16, 13, 16, 5, 2, (2, 2, 2, 2), 1, 16, "uint8", 200, 5, 5, 250, "vnni-dw", B, "NCHW"),
]


def _run(func, target, args):
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target)
    tensors = [tvm.runtime.tensor(a) for a in args]
    ex.mod["main"](*tensors)
    return tensors[-1].numpy()


def _spec(case, y_dtype=None):
    c, h, oc, k, s, pad, d, g, xdt, zx, zy, qmin, qmax, _, xl, yl = case
    ydt = y_dtype or ("int8" if qmin < 0 else "uint8")
    return QConvSpec(1, c, h, h, oc, k, k, (s, s), pad, (d, d), g, xdt, ydt, zx, zy, qmin, qmax,
                     x_layout=xl, y_layout=yl)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[13]}-{i}" for i, c in enumerate(CASES)])
def test_conv_template_bit_exact(case):
    tmpl = case[13]
    make, pack, vnni = TEMPLATES[tmpl]
    if vnni and not HAS_VNNI:
        pytest.skip("this CPU has no AVX512-VNNI")
    sp = _spec(case)
    kc = kernel_case(sp, pack, seed=sum(map(ord, str(case))))
    got = _run(make(sp), VNNI_TARGET if vnni else TARGET, kc.args)
    assert got.shape == kc.expected.shape
    kc.check(got)
    assert len(np.unique(got)) > 3  # not saturated to a constant: the check has teeth


@pytest.mark.parametrize("tmpl", ["avx2", "vnni", "avx2-dw", "vnni-dw"])
def test_float_epilogue_bit_exact(tmpl):
    """Integer accumulation, float32 dequantise epilogue with a fused ReLU6, blocked input."""
    make, pack, vnni = TEMPLATES[tmpl]
    if vnni and not HAS_VNNI:
        pytest.skip("this CPU has no AVX512-VNNI")
    groups = 16 if tmpl.endswith("dw") else 1
    sp = replace(QConvSpec(1, 16, 10, 10, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), groups,
                           "uint8", "float32", 5, 0, 0, 0, x_layout=B), fmin=0.0, fmax=6.0)
    kc = kernel_case(sp, pack, seed=3)
    got = _run(make(sp), VNNI_TARGET if vnni else TARGET, kc.args)
    kc.check(got)
    assert got.dtype == np.float32 and got.min() == 0.0 and got.max() == 6.0
    assert len(np.unique(got)) > 100


def test_template_choice_follows_target_hardware():
    from pfcompile.quantexec import with_int8_features
    from pfcompile.quantexec.kernel_choice import (
        int8_dot_kind,
        select_conv_kernel,
        supports_blocked,
    )
    from pfcompile.targets import load_target

    host = load_target("host")
    sp = QConvSpec(1, 8, 8, 8, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, "uint8", "uint8",
                   0, 0, 0, 255)
    for dot in ("avx2", "avx-vnni", "avx512-vnni"):
        t = replace(host, hardware={**host.hardware, "int8_dot": dot})
        assert int8_dot_kind(t) == "x86"
        assert select_conv_kernel(sp, t).name == "x86-avx2-pmaddwd"  # target lacks +vnni
        want = "x86-avx2-pmaddwd" if dot == "avx2" else "x86-vnni-vpdpbusd"
        assert select_conv_kernel(sp, with_int8_features(t)).name == want
    int8_sp = replace(sp, x_dtype="int8", zx=0)
    vt = with_int8_features(replace(host, hardware={**host.hardware, "int8_dot": "avx512-vnni"}))
    assert select_conv_kernel(int8_sp, vt).name == "x86-avx2-pmaddwd"  # vpdpbusd wants uint8
    dw = replace(sp, groups=8, oc=8)
    assert select_conv_kernel(dw, vt).name == "x86-vnni-dw-vpdpbusd"
    assert select_conv_kernel(replace(dw, x_dtype="int8"), vt).name == "x86-avx2-dw-pmaddwd"
    dilated = replace(dw, dilation=(2, 2), padding=(2, 2, 2, 2))
    assert select_conv_kernel(dilated, vt).name == "depthwise"
    assert supports_blocked(dw, vt) and not supports_blocked(dilated, vt)
    assert int8_dot_kind(load_target("arm64")) == "neon"
    assert int8_dot_kind(load_target("arm64-dotprod")) == "sdot"
    assert select_conv_kernel(sp, load_target("arm64")).name == "arm-neon-smlal"
    sdot = select_conv_kernel(sp, load_target("arm64-dotprod"))
    assert sdot.name == "arm-sdot" and sdot.x_offset == -128  # uint8 data -> signed dot
    assert select_conv_kernel(replace(sp, x_dtype="int8"), load_target("arm64-dotprod")).x_offset == 0
    assert select_conv_kernel(dw, load_target("arm64-dotprod")).name == "arm-sdot-dw"
    assert select_conv_kernel(replace(sp, groups=2, oc=8), load_target("arm64")).name == "generic"
    with pytest.raises(ValueError, match="blocked"):
        select_conv_kernel(replace(dilated, y_layout=B), vt)
