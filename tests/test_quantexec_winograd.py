"""The exact integer Winograd F(2x2, 3x3) of the AVX2 path (issue 17): bit for bit the
numpy int64 reference and the direct ``vpmaddwd`` kernel, per layer and in a whole model;
the int32 bound on input channels."""

from dataclasses import replace

import numpy as np
import onnx
import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st

from pfcompile import deploy, zoo
from pfcompile.compiler import compile_model
from pfcompile.data import Dataset
from pfcompile.passes.qlayers import as_proto
from pfcompile.passes.quantize import QuantConfig, quantize
from pfcompile.quantexec import winograd as wino
from pfcompile.quantexec import with_int8_features, x86
from pfcompile.quantexec.kernel_choice import select_conv_kernel
from pfcompile.quantexec.kernels import QConvSpec
from pfcompile.quantexec.refconv import _accumulate, conv_reference, kernel_case, to_blocked
from pfcompile.reference import reference_session
from pfcompile.targets import host_arch, load_target

X86 = pytest.mark.skipif(host_arch() != "x86_64", reason="the x86 integer templates run on x86-64")
TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2})
B = "NCHW8c"


def _run(func, args):
    ex = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)
    tensors = [tvm.runtime.tensor(a) for a in args]
    ex.mod["main"](*tensors)
    return tensors[-1].numpy()


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 5), oc=st.integers(1, 4), h=st.integers(3, 9), w=st.integers(3, 9),
       pad=st.tuples(*[st.integers(0, 2)] * 4), signed=st.booleans(), seed=st.integers(0, 99))
def test_integer_transforms_equal_direct_correlation(c, oc, h, w, pad, signed, seed):
    """U' = G'gG'^T, V = B^T d B, Y' = A^T M A = 4Y: the algebra is exact in integers."""
    rng = np.random.default_rng(seed)
    lo, hi = (-128, 128) if signed else (0, 256)
    x = rng.integers(lo, hi, (c, h, w))
    wt = rng.integers(-128, 128, (oc, c, 3, 3))
    zx = int(rng.integers(lo, hi))
    sp = QConvSpec(1, c, h, w, oc, 3, 3, (1, 1), pad, (1, 1), 1, "int8" if signed else "uint8",
                   "int8", zx, 0, -128, 127)
    want = _accumulate(sp, x[None], wt, np.zeros(oc, np.int64))[0]
    assert np.array_equal(wino.wino_reference(x, wt, zx, pad), want)


def test_transformed_weight_bounds():
    """|U'| <= 9 * 128 (int16); the extreme filters reach it."""
    w = np.full((2, 1, 3, 3), -128, np.int8)
    w[1] = 127
    u = wino.transform_weight_int(w)
    assert u.dtype == np.int16
    assert u[0, 0, 1, 1] == -1152 and u[1, 0, 1, 1] == 9 * 127 and u[0, 0, 0, 0] == -512
    assert wino.MAX_CHANNELS == 913
    packed = wino.pack_weight_wino(np.ones((16, 8, 3, 3), np.int8))
    assert packed.shape == (4, 4, 2, 1, 4, 8, 2) and packed.dtype == np.int16


CASES = [  # c, h, w, oc, pad, x dtype, zx, x layout, y layout, y dtype
    (16, 7, 7, 16, (1, 1, 1, 1), "uint8", 7, "NCHW", "NCHW", "uint8"),
    (16, 10, 10, 32, (1, 1, 1, 1), "uint8", 3, B, B, "uint8"),
    (8, 9, 12, 24, (0, 0, 0, 0), "int8", -4, B, "NCHW", "int8"),
    (24, 14, 11, 16, (1, 0, 2, 1), "uint8", 200, "NCHW", B, "uint8"),
    (32, 8, 8, 64, (1, 1, 1, 1), "uint8", 0, B, "NCHW", "float32"),
    (64, 4, 4, 64, (1, 1, 1, 1), "int8", 5, B, B, "int8"),
]


@X86
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}x{c[2]}-{c[3]}-{c[7]}-{c[8]}-{c[9]}"
                                               for c in CASES])
def test_wino_kernel_bit_exact_vs_reference_and_direct(case):
    c, h, w, oc, pad, xdt, zx, xl, yl, ydt = case
    qmin, qmax = (-128, 127) if ydt == "int8" else (0, 255)
    sp = QConvSpec(1, c, h, w, oc, 3, 3, (1, 1), pad, (1, 1), 1, xdt, ydt, zx, 3, qmin, qmax,
                   x_layout=xl, y_layout=yl)
    if ydt == "float32":
        sp = replace(sp, fmin=0.0, fmax=6.0)
    assert wino.wino_eligible(sp)
    kc = kernel_case(sp, wino.pack_weight_wino, seed=c * h + oc)
    got = _run(wino.wino_func(sp, fuse_v=False), kc.args)
    kc.check(got)  # the numpy int64 reference, bit for bit
    kc.check(_run(wino.wino_func(sp, fuse_v=True), kc.args))  # V computed per task
    assert len(np.unique(got)) > 50
    direct = select_conv_kernel(sp, load_target("host-avx2"), shared=False, winograd=False)
    assert direct.name == "x86-avx2-pmaddwd"
    args = list(kc.args)
    args[1] = direct.pack_weight(_weights(sp, seed=c * h + oc))
    assert np.array_equal(_run(direct.func, args), got)


def _weights(sp, seed):
    """The OIHW int8 weights ``kernel_case(sp, ..., seed)`` drew (same generator order)."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(sp.x_dtype)
    rng.integers(info.min, info.max + 1, (sp.n, sp.c, sp.h, sp.w))
    return rng.integers(-127, 128, (sp.oc, sp.c, 3, 3)).astype(np.int8)


@X86
def test_wino_kernel_at_the_int32_bound():
    """912 input channels (the largest multiple of 8 under MAX_CHANNELS), the extreme inputs
    and weights that make |M| and the accumulator largest: still exact; 920 is refused."""
    c, oc, h = 912, 8, 4
    sp = QConvSpec(1, c, h, h, oc, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, "uint8", "float32",
                   0, 0, 0, 0, x_layout=B, y_layout=B)
    assert not wino.wino_eligible(replace(sp, c=920))
    x = np.full((1, c, h, h), 255, np.uint8)
    w = np.full((oc, c, 3, 3), -128, np.int8)
    w[1::2] = 127
    bias = np.zeros(oc, np.int32)
    scale, offset = np.ones(oc, np.float32), np.zeros(oc, np.float32)
    want = conv_reference(sp, x, w, bias, scale, offset)
    assert want.min() == np.float32(-c * 9 * 255 * 128)  # a centre pixel, every term extreme
    got = _run(wino.wino_func(sp), [to_blocked(x), wino.pack_weight_wino(w), bias, scale, offset,
                                    np.zeros((1, 1, h * h, 8), np.float32)])
    np.testing.assert_array_equal(got, to_blocked(want))


@X86
def test_choice_follows_shape_and_isa():
    avx2 = load_target("host-avx2")
    big = QConvSpec(1, 64, 56, 56, 64, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, "uint8", "uint8",
                    3, 0, 0, 255, x_layout=B, y_layout=B)
    assert select_conv_kernel(big, avx2).name == wino.WINO_NAME
    assert select_conv_kernel(big, avx2, winograd=False).name == "x86-avx2-pmaddwd"
    small = replace(big, h=8, w=8)  # 2.4 M MACs
    assert select_conv_kernel(small, avx2).name == "x86-avx2-pmaddwd"
    assert select_conv_kernel(small, avx2, winograd=True).name == wino.WINO_NAME
    for other in (replace(big, stride=(2, 2)), replace(big, c=1000, w=8, h=8),
                  replace(big, c=12), replace(big, kh=1, kw=1, padding=(0, 0, 0, 0))):
        assert select_conv_kernel(other, avx2, winograd=True).name == "x86-avx2-pmaddwd"
    vnni = with_int8_features(replace(avx2, hardware={**avx2.hardware, "int8_dot": "avx512-vnni"}))
    assert select_conv_kernel(big, vnni).name == "x86-vnni-vpdpbusd"  # VNNI path unchanged
    assert select_conv_kernel(big, load_target("arm64")).name == "arm-neon-smlal"
    assert x86.avx2_conv_kernel(replace(big, groups=64, oc=64), avx2) is None


@pytest.fixture(scope="module")
def resnet20_q8(tmp_path_factory):
    """ResNet-20 (untrained, seeded) on 16x16 digits, 8-bit QDQ, and a few images."""
    import torch

    d = zoo.digits_splits(16)
    cal = Dataset({"input": d["x_calib"][:32]}, None, "calib")
    root = tmp_path_factory.mktemp("wino")
    torch.manual_seed(0)
    f = zoo.export_onnx(zoo.resnet20(10, 1).eval(), root / "r20.onnx", (1, 1, 16, 16))
    q = root / "r20_q8.onnx"
    onnx.save(as_proto(quantize(onnx.load(str(f)), QuantConfig(bits=8), cal).model), q)
    return q, d["x_val"][:6]


@X86
def test_whole_resnet_winograd_equals_direct_bit_for_bit(resnet20_q8, tmp_path, monkeypatch):
    """Every eligible 3x3 layer on Winograd vs none: the same outputs bit for bit, and within
    one output step of the exact reference."""
    q, xs = resnet20_q8
    outs, kernels = {}, {}
    for name, min_macs in (("wino", 0), ("direct", 10**12)):
        monkeypatch.setattr(wino, "MIN_MACS", min_macs)
        art = compile_model(q, "host-avx2", tmp_path / name)
        kernels[name] = [layer.get("kernel") for layer in art.meta["layers"]]
        model = deploy.load(art.dir)
        outs[name] = np.concatenate([model(tvm.runtime.tensor(x[None])).numpy() for x in xs])
    # 3 stages x 3 blocks x 2 3x3 convs, less the 2 stride-2 ones (the 1-channel stem: no)
    assert kernels["wino"].count(wino.WINO_NAME) == 16
    assert wino.WINO_NAME not in kernels["direct"]
    np.testing.assert_array_equal(outs["wino"], outs["direct"])
    sess = reference_session(q)
    ref = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[None]})[0] for x in xs])
    assert np.abs(outs["wino"] - ref).max() <= 0.2 * np.abs(ref).max()
    assert np.argmax(outs["wino"], 1).tolist() == np.argmax(ref, 1).tolist()
