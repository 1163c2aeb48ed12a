"""Each integer conv template equals a numpy int64 reference bit for bit."""


import numpy as np
import pytest
import tvm

from pfcompile.quantexec import x86
from pfcompile.quantexec.kernel_choice import _depthwise_conv, _generic_conv
from pfcompile.quantexec.kernels import QConvSpec
from pfcompile.quantexec.requant import fixed_point, requantize_ref
from pfcompile.targets import cpu_flags, host_arch

pytestmark = pytest.mark.skipif(host_arch() != "x86_64",
                                reason="the x86 integer templates run on an x86-64 CPU only")

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2})


def _reference(sp: QConvSpec, x, w, bias, m0, sh):
    pt, pl, pb, pr = sp.padding
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=sp.zx)
    icg, ocg = sp.c // sp.groups, sp.oc // sp.groups
    acc = np.zeros((sp.n, sp.oc, sp.oh, sp.ow), np.int64)
    (s0, s1), (d0, d1) = sp.stride, sp.dilation
    for o in range(sp.oc):
        g = o // ocg
        for ky in range(sp.kh):
            for kx in range(sp.kw):
                patch = xp[:, g * icg:(g + 1) * icg,
                           ky * d0: ky * d0 + s0 * (sp.oh - 1) + 1: s0,
                           kx * d1: kx * d1 + s1 * (sp.ow - 1) + 1: s1]
                acc[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, ky, kx].astype(np.int64))
    # the kernels fold -zx*sum(w) into the bias; the reference subtracts zx explicitly
    wsum = w.reshape(sp.oc, -1).astype(np.int64).sum(1)
    acc = acc - sp.zx * wsum[None, :, None, None] + bias[None, :, None, None]
    return requantize_ref(acc, m0, sh, sp.zy, sp.qmin, sp.qmax).astype(sp.y_dtype)


CASES = [
    # c, h, oc, k, stride, pad (t,l,b,r), dil, groups, x dtype, zx, zy, qmin, qmax, template
    (6, 9, 12, 3, 1, (1, 1, 1, 1), 1, 1, "uint8", 7, 3, 3, 255, "avx2"),
    (5, 11, 10, 3, 2, (1, 0, 1, 2), 1, 1, "int8", -4, 2, -128, 127, "avx2"),
    (3, 13, 16, 7, 2, (3, 3, 3, 3), 1, 1, "uint8", 128, 0, 0, 255, "avx2"),
    (8, 10, 8, 3, 1, (2, 2, 2, 2), 2, 1, "uint8", 1, 9, 9, 200, "avx2"),
    (8, 10, 8, 1, 1, (0, 0, 0, 0), 1, 1, "int8", 0, 0, -128, 127, "generic"),
    (6, 9, 12, 3, 1, (1, 1, 1, 1), 1, 2, "uint8", 5, 4, 4, 255, "generic"),
    (16, 16, 16, 3, 1, (1, 1, 1, 1), 1, 16, "uint8", 11, 0, 0, 255, "depthwise"),
    (8, 15, 8, 3, 2, (1, 1, 1, 1), 1, 8, "int8", -3, 1, -128, 127, "depthwise"),
    (6, 9, 12, 3, 1, (1, 1, 1, 1), 1, 1, "uint8", 7, 3, 3, 255, "vnni"),
    (3, 13, 16, 7, 2, (3, 3, 3, 3), 1, 1, "uint8", 128, 0, 0, 255, "vnni"),
]
HAS_VNNI = "avx512_vnni" in cpu_flags()
VNNI_TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v4", "mattr": ["+avx512vnni"],
                                 "num-cores": 2})


@pytest.mark.parametrize("case", CASES, ids=[f"{c[-1]}-{i}" for i, c in enumerate(CASES)])
def test_conv_template_bit_exact(case):
    c, h, oc, k, s, pad, d, g, xdt, zx, zy, qmin, qmax, tmpl = case
    if tmpl == "vnni" and not HAS_VNNI:
        pytest.skip("this CPU has no AVX512-VNNI")
    sp = QConvSpec(1, c, h, h, oc, k, k, (s, s), pad, (d, d), g, xdt, "int8" if qmin < 0 else "uint8",
                   zx, zy, qmin, qmax)
    rng = np.random.default_rng(sum(map(hash, map(str, case))) % 2**32)
    info = np.iinfo(xdt)
    x = rng.integers(info.min, info.max + 1, (1, c, h, h)).astype(xdt)
    w = rng.integers(-127, 128, (oc, c // g, k, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, oc).astype(np.int32)
    m0, sh = fixed_point(rng.uniform(2e-4, 3e-3, oc))
    wsum = w.reshape(oc, -1).astype(np.int64).sum(1)
    bias_k = (bias - zx * wsum).astype(np.int32)
    if tmpl == "avx2":
        func, wk = x86.avx2_conv_func(sp), x86.pack_weight_avx2(w)
    elif tmpl == "vnni":
        func, wk = x86.vnni_conv_func(sp), x86.pack_weight_vnni(w)
    else:
        func, wk = (_depthwise_conv(sp) if tmpl == "depthwise" else _generic_conv(sp)), w
    ex = tvm.compile(tvm.IRModule({"main": func}), target=VNNI_TARGET if tmpl == "vnni" else TARGET)
    out = np.zeros((1, oc, sp.oh, sp.ow), sp.y_dtype)
    args = [tvm.runtime.tensor(a) for a in (x, wk, bias_k, m0, sh, out)]
    ex.mod["main"](*args)
    got = args[-1].numpy()
    ref = _reference(sp, x, w, bias, m0, sh)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    assert len(np.unique(got)) > 3  # not saturated to a constant: the check has teeth


def test_template_choice_follows_target_hardware():
    from dataclasses import replace

    from pfcompile.quantexec import with_int8_features
    from pfcompile.quantexec.kernel_choice import int8_dot_kind, select_conv_kernel
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
    assert int8_dot_kind(load_target("arm64")) == "neon"
    assert int8_dot_kind(load_target("arm64-dotprod")) == "sdot"
    assert select_conv_kernel(sp, load_target("arm64")).name == "generic"
    assert select_conv_kernel(replace(sp, groups=8, oc=8), host).name == "depthwise"
