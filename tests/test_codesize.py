"""What the code of a library costs (issue 16): no argument asserts in the kernels, integer
kernels shared across channel counts, QuantizeLinear kernels shared across layers; the
outputs unchanged by any of it."""

import itertools
from dataclasses import replace

import numpy as np
import onnx
import pytest
import tvm

from pfcompile import deploy, zoo
from pfcompile.artifact_size import artifact_size
from pfcompile.compiler import compile_model, import_onnx
from pfcompile.data import Dataset
from pfcompile.passes.qlayers import as_proto
from pfcompile.passes.quantize import QuantConfig, quantize
from pfcompile.quantexec import blocked, onnx_layer_names, prepare_qdq, with_int8_features, x86
from pfcompile.quantexec.kernels import QConvSpec
from pfcompile.quantexec.lower import lower_qdq
from pfcompile.quantexec.refconv import kernel_case
from pfcompile.targets import cpu_flags, host_arch

X86 = pytest.mark.skipif(host_arch() != "x86_64", reason="x86 integer templates")
B = "NCHW8c"


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """ResNet-20 and the MobileNetV2-style net (untrained, seeded) on 16x16 digits: float and
    8-bit QDQ files, and a few validation images."""
    import torch

    d = zoo.digits_splits(16)
    cal = Dataset({"input": d["x_calib"][:32]}, None, "calib")
    root = tmp_path_factory.mktemp("codesize")
    out = {"x": d["x_val"][:4]}
    for name, make in (("resnet20", zoo.resnet20), ("mbv2", zoo.mobilenet_v2_cifar)):
        torch.manual_seed(0)
        f = zoo.export_onnx(make(10, 1).eval(), root / f"{name}.onnx", (1, 1, 16, 16))
        q = root / f"{name}_q8.onnx"
        onnx.save(as_proto(quantize(onnx.load(str(f)), QuantConfig(bits=8), cal).model), q)
        out[name], out[name + "_q8"] = f, q
    return out


def _qconv_funcs(path, target) -> tuple[int, int]:
    """(integer conv layers, distinct integer conv functions) after ``lower_qdq``."""
    m, _ = prepare_qdq(onnx.load(str(path)))
    mod, reports = lower_qdq(import_onnx(m), with_int8_features(target), onnx_layer_names(m))
    layers = sum(r.path == "int8" and r.op == "conv2d" for r in reports)
    funcs = sum(gv.name_hint.startswith("qconv2d") for gv in mod.functions)
    return layers, funcs


def _outputs(art_dir, xs) -> np.ndarray:
    model = deploy.load(art_dir)
    return np.concatenate([model(tvm.runtime.tensor(x[None])).numpy() for x in xs])


def test_int8_kernels_shared_across_channel_counts(nets, int8_target, tmp_path, monkeypatch):
    """MobileNetV2's 31 conv layers run on at most 18 integer conv functions (16 on VNNI;
    with one per layer shape: 24-25), and the library gives the same outputs, bit for bit,
    as one built with a function for each layer's channel counts."""
    layers, funcs = _qconv_funcs(nets["mbv2_q8"], int8_target)
    assert layers == 31 and funcs <= 18, (layers, funcs)
    shared = compile_model(nets["mbv2_q8"], int8_target, tmp_path / "shared")
    monkeypatch.setattr(blocked, "shareable", lambda sp: False)
    for mod in ("x86", "arm"):  # the selectors import the name
        monkeypatch.setattr(f"pfcompile.quantexec.{mod}.shareable", lambda sp: False)
    n_fixed = _qconv_funcs(nets["mbv2_q8"], int8_target)[1]
    assert n_fixed > funcs + 5, (n_fixed, funcs)
    fixed = compile_model(nets["mbv2_q8"], int8_target, tmp_path / "fixed")
    got = _outputs(shared.dir, nets["x"])
    assert np.array_equal(got, _outputs(fixed.dir, nets["x"]))
    assert np.ptp(got) > 0  # not a constant output
    # the machine code itself (.text): code_bytes also holds the linker's 4 KiB page padding,
    # which moves with the weights' size (tests/test_storage.py)
    text = [_text_bytes(a.so_path) for a in (shared, fixed)]
    assert text[0] < text[1] - 8192, text


def test_code_bytes_of_int8_and_float_builds(nets, tmp_path):
    """No argument checks in the kernels (``tirx.disable_assert``): ResNet-20's float library
    carries < 64 KB of code (121 KB with them) and its int8 one < the float one's + 28 KB
    (12 integer conv kernels of ~4 KB; 177 KB with the checks). A wrong input is still
    refused, by the library's entry function."""
    f = artifact_size(compile_model(nets["resnet20"], "host", tmp_path / "f").dir)
    art = compile_model(nets["resnet20_q8"], "host", tmp_path / "q8")
    q = artifact_size(art.dir)
    assert f.code_bytes < 64_000, f
    assert q.code_bytes < f.code_bytes + 28_000, (f, q)
    model = deploy.load(art.dir)
    with pytest.raises((RuntimeError, ValueError), match="mismatch"):
        model(tvm.runtime.tensor(np.zeros((1, 1, 8, 8), np.float32)))
    with pytest.raises((RuntimeError, ValueError), match="dtype"):
        model(tvm.runtime.tensor(np.zeros((1, 1, 16, 16), np.float64)))


def test_residual_quantize_ops_share_kernels(nets):
    """ResNet-20's QuantizeLinear ops left in float (after each residual add) take their
    scale and zero point as tensors: the 9 of them become one kernel per shape."""
    m, _ = prepare_qdq(onnx.load(str(nets["resnet20_q8"])))
    mod, _ = lower_qdq(import_onnx(m), with_int8_features(_host()), onnx_layer_names(m))
    quant = [b.value for b in mod["main"].body.blocks[0].bindings
             if isinstance(b.value, tvm.relax.Call) and getattr(b.value.op, "name", "") ==
             "relax.quantize"]
    shapes = {(tuple(int(d) for d in q.args[0].ty.shape), str(q.attrs.out_dtype))
              for q in quant}
    tensor_params = [q for q in quant if tuple(q.args[1].ty.shape) == (1,)]
    assert len(quant) >= 9 and len(shapes) <= 5
    # every op with a twin of its shape takes tensors; a lone one keeps its scalars
    assert len(tensor_params) >= len(quant) - len(shapes)
    built = tvm.relax.transform.LegalizeOps()(mod)
    kernels = [gv.name_hint for gv in built.functions if gv.name_hint.startswith("quantize")]
    assert len(kernels) <= len(shapes), kernels


def _host():
    from pfcompile.targets import load_target

    return load_target("host")


def _x86_isa(isa: str):
    """(TVM target, kernel spec, packed weight dtype) of ``isa`` (skips VNNI on a CPU without it)."""
    if isa == "vnni" and "avx512_vnni" not in cpu_flags():
        pytest.skip("this CPU has no AVX512-VNNI")
    target = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v4", "mattr": ["+avx512vnni"]}
                               if isa == "vnni" else {"kind": "llvm", "mcpu": "x86-64-v3"})
    return (target, x86.VNNI, np.int8) if isa == "vnni" else (target, x86.AVX2, np.int16)


@X86
@pytest.mark.parametrize("isa", ["avx2", "vnni"])
@pytest.mark.parametrize(("c", "oc", "k", "s", "xl", "yl", "ydt"), [
    (16, 32, 3, 1, B, B, "uint8"),
    (24, 48, 1, 1, "NCHW", B, "uint8"),
    (32, 16, 1, 1, B, "NCHW", "float32"),
    (16, 24, 3, 2, "NCHW", "NCHW", "uint8"),
])
def test_shared_conv_kernel_bit_exact_for_each_channel_count(isa, c, oc, k, s, xl, yl, ydt):
    """One shared conv function, called with the arguments of layers with 1x, 2x and 3x the
    channels (the same tile), equals the numpy reference bit for bit each time."""
    target, spec, dtype = _x86_isa(isa)
    sp = QConvSpec(1, c, 8, 8, oc, k, k, (s, s), (k // 2,) * 4, (1, 1), 1, "uint8", ydt, 7, 3,
                   3, 255, x_layout=xl, y_layout=yl)
    t_oc = blocked.conv_tiles(sp, spec)[1]
    ex = tvm.compile(tvm.IRModule({"main": blocked.conv_func(sp, spec, shared=True)}),
                     target=target)
    ran = 0
    for mult in (1, 2, 3):
        sp2 = replace(sp, c=c * mult, oc=oc * mult)
        if (oc * mult // 8) % t_oc:
            continue
        kc = kernel_case(sp2, lambda w: blocked.pack_weight_conv_shared(
            w, spec.conv_kg, dtype, t_oc), seed=mult)
        args = [tvm.runtime.tensor(a) for a in kc.args]
        ex.mod["main"](*args)
        kc.check(args[-1].numpy())
        ran += 1
    assert ran >= 2


@X86
@pytest.mark.parametrize(("xl", "yl", "xdt", "ydt", "isa"), [
    (B, B, "uint8", "uint8", "vnni"),
    ("NCHW", "NCHW", "int8", "int8", "avx2"),
    (B, "NCHW", "uint8", "float32", "avx2"),
])
def test_shared_depthwise_kernel_bit_exact_for_each_channel_count(xl, yl, xdt, ydt, isa):
    target, spec, dtype = _x86_isa(isa)
    lo, hi = (-128, 127) if ydt == "int8" else (3, 255)
    sp = QConvSpec(1, 16, 9, 9, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 16, xdt, ydt, 5, 3,
                   lo, hi, x_layout=xl, y_layout=yl)
    ex = tvm.compile(tvm.IRModule({"main": blocked.depthwise_func(sp, spec, shared=True)}),
                     target=target)
    for mult in (1, 3):
        sp2 = replace(sp, c=16 * mult, oc=16 * mult, groups=16 * mult)
        kc = kernel_case(sp2, lambda w: blocked.pack_weight_dw(w, spec.dw_kg, dtype), seed=mult)
        args = [tvm.runtime.tensor(a) for a in kc.args]
        ex.mod["main"](*args)
        kc.check(args[-1].numpy())
        assert len(np.unique(args[-1].numpy())) > 3


def test_shared_kernels_refuse_partial_channel_blocks():
    sp = QConvSpec(1, 12, 8, 8, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, "uint8", "uint8",
                   0, 0, 0, 255)
    assert not blocked.shareable(sp) and blocked.shareable(replace(sp, c=16))
    with pytest.raises(ValueError, match="multiples of 8"):
        blocked.conv_func(sp, x86.AVX2, shared=True)


def _with_scalars(kc, base: int, scalars, pad: int = 5):
    """A kernel case's arguments for a kernel reading its per-channel arrays at ``base`` in
    longer arrays (``shared_params``): other values around them, ``base`` and the sizes
    after the tensors."""
    x, w, bias, scale, offset, out = kc.args
    rng = np.random.default_rng(1)

    def embed(a):
        full = rng.standard_normal(base + a.size + pad).astype(a.dtype) * 100
        full[base:base + a.size] = a
        return full

    return [tvm.runtime.tensor(a) for a in (x, w, embed(bias), embed(scale), embed(offset))] \
        + [base, *scalars, tvm.runtime.tensor(out)]


@X86
@pytest.mark.parametrize(("c", "oc", "k", "s", "hw", "xl", "yl", "ydt"), [
    (16, 32, 3, 1, (8, 4), B, B, "uint8"),            # rows, blocked in and out
    (16, 32, 1, 2, (16, 8), "NCHW", "NCHW", "float32"),  # a ResNet shortcut
    (16, 24, 1, 1, (8, 4), B, B, "uint8"),            # flat 1x1
])
def test_conv_kernel_shared_across_spatial_sizes_bit_exact(c, oc, k, s, hw, xl, yl, ydt):
    """One conv function taking its sizes (and its per-channel arrays' offset) as arguments,
    called for two spatial sizes and two channel counts, equals the numpy reference bit for
    bit each time."""
    target, spec, dtype = _x86_isa("avx2")
    sp = QConvSpec(1, c, hw[0], hw[0], oc, k, k, (s, s), (k // 2,) * 4, (1, 1), 1, "uint8",
                   ydt, 7, 3, 3, 255, x_layout=xl, y_layout=yl, shared_params=True)
    assert blocked.spatial_ok(sp)
    sp = replace(sp, spatial=1)
    t_oc = blocked.kernel_tiles(sp, spec)[1]
    ex = tvm.compile(tvm.IRModule({"main": blocked.conv_func(sp, spec, shared=True)}),
                     target=target)
    for n, (size, mult) in enumerate(((hw[0], 1), (hw[1], 2))):
        sp2 = replace(sp, h=size, w=size, c=c * mult, oc=oc * t_oc * mult)
        kc = kernel_case(sp2, lambda w: blocked.pack_weight_conv_shared(
            w, spec.conv_kg, dtype, t_oc), seed=n)
        args = _with_scalars(kc, 3 + 8 * n, blocked.spatial_args(sp2, spec))
        ex.mod["main"](*args)
        kc.check(args[-1].numpy())
        assert np.ptp(args[-1].numpy()) > 0


def test_spatial_sharing_only_where_it_costs_no_speed():
    """A 3x3 conv reading or writing NCHW (a gather / scatter over 8 planes whose size would
    be a run-time value) keeps kernels of fixed sizes; blocked ones and 1x1 convs may share."""
    sp = QConvSpec(1, 16, 8, 8, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, "uint8", "uint8",
                   0, 0, 0, 255, x_layout=B, y_layout=B)
    assert blocked.spatial_ok(sp)
    assert not blocked.spatial_ok(replace(sp, x_layout="NCHW"))
    assert not blocked.spatial_ok(replace(sp, y_layout="NCHW"))
    one = replace(sp, kh=1, kw=1, padding=(0, 0, 0, 0), stride=(2, 2), x_layout="NCHW",
                  y_layout="NCHW")
    assert blocked.spatial_ok(one)
    # a flat 1x1 (stride 1) needs blocked input and output
    assert not blocked.spatial_ok(replace(one, stride=(1, 1)))
    with pytest.raises(ValueError, match="spatially shared"):
        blocked.conv_func(replace(sp, x_layout="NCHW", spatial=1), x86.AVX2, shared=True)


def test_arm64_link_keeps_relro_without_file_padding(tmp_path):
    """arm64 libraries: with LLVM lld (>= 18) 64 KB-aligned segments, a RELRO region that
    ends on a 64 KB boundary (loads and is protected on 64 KB-page kernels) and no zero
    padding in the file; with GNU ld (no lld installed) the options are ``-s`` only."""
    import shutil

    from elftools.elf.elffile import ELFFile

    from pfcompile.compiler import AARCH64_PAGE, cross_link_options, find_lld
    from pfcompile.targets import load_target

    arm = load_target("arm64")
    opts = cross_link_options(arm)
    assert cross_link_options(load_target("host")) == ["-s"]
    if find_lld() is None:
        assert opts == ["-s"]
        pytest.skip("no ld.lld >= 18 (Debian: apt-get install lld-19)")
    assert "-fuse-ld=lld" in opts and f"-Wl,-z,common-page-size={AARCH64_PAGE}" in opts
    if shutil.which(arm.cross_compiler) is None:
        pytest.skip(f"no {arm.cross_compiler}")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    f = zoo.export_onnx(zoo.resnet20(10, 1).eval(), tmp_path / "r20.onnx", (1, 1, 8, 8))
    so = compile_model(f, arm, tmp_path / "arm").so_path
    with open(so, "rb") as fh:
        segs = [s.header for s in ELFFile(fh).iter_segments()]
    loads = [s for s in segs if s.p_type == "PT_LOAD"]
    relro = [s for s in segs if s.p_type == "PT_GNU_RELRO"]
    assert len(relro) == 1 and (relro[0].p_vaddr + relro[0].p_memsz) % AARCH64_PAGE == 0
    for s in loads:
        assert s.p_align == AARCH64_PAGE and s.p_offset % AARCH64_PAGE == s.p_vaddr % AARCH64_PAGE
    gaps = [b.p_offset - (a.p_offset + a.p_filesz) for a, b in itertools.pairwise(loads)]
    assert max(gaps) < 4096, gaps


def _layout_calls(path) -> tuple[int, int]:
    """(kernel calls, of which layout transforms) in ``main`` of a QDQ model's fused module."""
    from pfcompile.codegen.pipeline import fuse_to_tir

    m, _ = prepare_qdq(onnx.load(str(path)))
    tgt = with_int8_features(_host())
    mod, _ = lower_qdq(import_onnx(m), tgt, onnx_layer_names(m))
    mod = fuse_to_tir(mod, tgt)
    calls = [b.value for blk in mod["main"].body.blocks for b in blk.bindings
             if isinstance(b.value, tvm.relax.Call) and b.value.args
             and isinstance(b.value.args[0], tvm.ir.GlobalVar)]
    return len(calls), sum("layout_transform" in c.args[0].name_hint for c in calls)


def test_codebook_fake_quant_stays_blocked(nets, tmp_path, monkeypatch):
    """A codebook build (float convs, quantised activations): the per-tensor
    quantize / dequantize of each blocked conv output runs on the blocked layout, fused
    into the conv kernel, with no layout transform around it; the library's outputs are
    bit for bit those of the build that transforms to NCHW and back, and it is smaller."""
    d = zoo.digits_splits(16)
    cal = Dataset({"input": d["x_calib"][:32]}, None, "calib")
    cb = tmp_path / "mbv2_cb4.onnx"
    onnx.save(as_proto(quantize(onnx.load(str(nets["mbv2"])), QuantConfig(bits=4, codebook=True),
                                cal).model), cb)
    calls, transforms = _layout_calls(cb)
    new = compile_model(cb, "host", tmp_path / "new")
    monkeypatch.setattr("pfcompile.codegen.pipeline.blocked_fake_quant", lambda m: m)
    calls_old, transforms_old = _layout_calls(cb)
    old = compile_model(cb, "host", tmp_path / "old")
    assert transforms_old >= 20 and transforms <= 2, (transforms_old, transforms)
    assert calls < calls_old - 60, (calls_old, calls)
    got = _outputs(new.dir, nets["x"])
    assert np.array_equal(got, _outputs(old.dir, nets["x"]))
    assert np.ptp(got) > 0
    assert artifact_size(new.dir).size_bytes < artifact_size(old.dir).size_bytes - 12_000


def _text_bytes(so_path) -> int:
    from elftools.elf.elffile import ELFFile

    with open(so_path, "rb") as f:
        return int(ELFFile(f).get_section_by_name(".text")["sh_size"])
