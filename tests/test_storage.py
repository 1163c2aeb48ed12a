"""Compact weight storage (pfcompile.storage): exact encodings, TIR decoders, the
lifted library (decoded once at load), and the deployed size measured from files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import tvm

from pfcompile import deploy
from pfcompile.artifact_size import artifact_size, library_weight_bytes
from pfcompile.compiler import build_relax, compile_model, import_onnx
from pfcompile.data import load_npz
from pfcompile.measure import measure
from pfcompile.model import input_specs, load_onnx
from pfcompile.passes.qlayers import as_proto
from pfcompile.passes.quantize import QuantConfig, quant_report, quantize
from pfcompile.passes.sparsify import SparsifyConfig, sparsify, sparsity_report
from pfcompile.storage import encode as enc
from pfcompile.storage.decode import bits_func, codebook_func, sparse_func
from pfcompile.storage.predict import stored_weight_bytes
from pfcompile.targets import load_target

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- encodings
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_bits_round_trip_at_their_width(bits):
    q = (1 << (bits - 1)) - 1
    a = RNG.integers(-q, q + 1, size=(37, 5, 3)).astype(np.int16)
    e = enc.encode_bits(a)
    assert e.bits == bits and e.signed
    assert e.nbytes == -(-a.size * bits // 8) + 1  # the bit stream + one pad byte
    assert np.array_equal(enc.decode(e).reshape(a.shape), a) and enc.decode(e).dtype == a.dtype


def test_choose_picks_the_smallest_exact_encoding():
    # 4-bit values in an int8 container: half a byte each
    w4 = RNG.integers(-7, 8, size=4096).astype(np.int8)
    e = enc.choose(w4)
    assert isinstance(e, enc.Bits) and e.bits == 4 and e.nbytes == 2049
    # a float codebook of 16 values: 4-bit indices + the table
    cb = np.sort(RNG.standard_normal(16)).astype(np.float32)
    w = cb[RNG.integers(0, 16, 8192)]
    e = enc.choose(w)
    assert isinstance(e, enc.Codebook) and e.index.bits == 4
    assert e.nbytes == 8192 // 2 + 1 + 16 * 4
    # 75 % zeros: bitmap + block counts + non-zeros, below the CSR the sparsify pass reports
    s = RNG.standard_normal(8192).astype(np.float32)
    s[RNG.random(8192) < 0.75] = 0
    e = enc.choose(s)
    nnz = int(np.count_nonzero(s))
    assert isinstance(e, enc.Sparse) and isinstance(e.values, enc.Raw)
    assert e.nbytes == 8192 // 8 + 4 * (8192 // enc.BLOCK) + 4 * nnz
    assert e.nbytes < nnz * 8 + 4  # int32 CSR of one row
    # sparse 4-bit integers: the non-zeros bit-packed too
    s8 = np.where(s != 0, RNG.integers(1, 8, s.size) * RNG.choice([-1, 1], s.size), 0).astype(np.int8)
    e = enc.choose(s8)
    assert isinstance(e, enc.Sparse) and isinstance(e.values, enc.Bits) and e.values.bits == 4
    for a in (w4, w, s, s8):
        assert np.array_equal(enc.decode(enc.choose(a)).view(np.uint8), a.reshape(-1).view(np.uint8))
    # plain float weights, and tiny tensors, stay as they are
    assert enc.choose(RNG.standard_normal(4096).astype(np.float32)) is None
    assert enc.choose(RNG.integers(-7, 8, 64).astype(np.int8)) is None


def test_encodings_keep_bit_patterns():
    a = np.zeros(4096, np.float32)
    a[::3] = -0.0
    a[1::7] = np.nan
    a[2::11] = 1.5
    e = enc.choose(a)
    assert e is not None
    assert np.array_equal(enc.decode(e).view(np.uint32), a.view(np.uint32))


def test_tir_decoders_equal_numpy():
    target = tvm.target.Target({"kind": "llvm", "num-cores": 1})
    dev = tvm.cpu()

    def run(func, arrays, n, dtype):
        ex = tvm.compile(tvm.IRModule({"main": func}), target=target)
        out = tvm.runtime.empty((n,), dtype, dev)
        ex["main"](*[tvm.runtime.tensor(a, dev) for a in arrays], out)
        return out.numpy()

    a3 = RNG.integers(-4, 4, 10001).astype(np.int16)  # 3 bits, straddling byte borders
    e = enc.encode_bits(a3)
    assert np.array_equal(run(bits_func(3, True, "int16"), [e.data], e.n, "int16"), a3)
    cb = RNG.standard_normal(5).astype(np.float32)
    w = cb[RNG.integers(0, 5, 3333)]
    e = enc.encode_codebook(w)
    assert e.index.bits == 3
    assert np.array_equal(run(codebook_func(3, "float32"), [e.index.data, e.table], e.n, "float32"), w)
    s = RNG.standard_normal(1000).astype(np.float32)
    s[RNG.random(1000) < 0.6] = 0
    e = enc.encode_sparse(s)
    got = run(sparse_func("float32", enc.BLOCK), [e.mask, e.counts, enc.decode(e.values)], e.n,
              "float32")
    assert np.array_equal(got, s)


def test_wide_bits_and_lanes_round_trip_in_numpy_and_tir():
    """int32 biases of 17 bits (4-byte reads), and depthwise-like weights whose 4th tap of
    every 4 is zero (Lanes: 3 of 4 lanes stored), exact in numpy and in the TIR decoders."""
    from pfcompile.storage.decode import lanes_func

    target = tvm.target.Target({"kind": "llvm", "num-cores": 1})

    def run(func, arrays, n, dtype):
        ex = tvm.compile(tvm.IRModule({"main": func}), target=target)
        out = tvm.runtime.empty((n,), dtype, tvm.cpu())
        ex["main"](*[tvm.runtime.tensor(a) for a in arrays], out)
        return out.numpy()

    b = RNG.integers(-60000, 60000, 777).astype(np.int32)
    e = enc.encode_bits(b)
    assert e.bits == 17 and e.nbytes == -(-777 * 17 // 8) + 3
    assert np.array_equal(enc.decode(e), b)
    assert np.array_equal(run(bits_func(17, True, "int32"), [e.data], e.n, "int32"), b)
    assert enc.encode_bits(RNG.integers(0, 1 << 30, 10).astype(np.int32)) is None  # > 24 bits
    w = RNG.integers(-7, 8, (12, 3, 1, 8, 4)).astype(np.int8)
    w[..., 3] = 0
    e = enc.choose(w, min_saving=256)
    assert isinstance(e, enc.Lanes) and e.period == 4
    assert e.rank.tolist() == [0, 1, 2, -1, 3] and e.values.bits == 4
    assert e.nbytes == -(-w.size * 3 // 4 * 4 // 8) + 1 + 5 * 4  # 3 of 4 at 4 bits + ranks
    assert np.array_equal(enc.decode(e).reshape(w.shape), w)
    got = run(lanes_func(4, True, "int8"), [e.values.data, e.rank], e.n, "int8")
    assert np.array_equal(got, w.reshape(-1))
    # a sparse encoding must beat the best dense one by min_saving (it adds a decoder)
    z = np.zeros(4096, np.int8)
    z[RNG.integers(0, 4096, 700)] = 1
    assert isinstance(enc.choose(z), enc.Bits)


def test_grouped_streams_and_widths():
    """Bits tensors of one decoder share one stream, each at a 64-byte aligned offset of the
    decoded array, bit-exact, and so do codebooks of one index width; narrow widths of a few elements are widened into a wider
    group (one decoder fewer) and large ones are not."""
    from pfcompile.storage import lift

    parts = [RNG.integers(-7, 8, n).astype(np.int8) for n in (100, 64, 3)]
    stream, offsets = lift._group_stream([enc.encode_bits_as(p, 4, True) for p in parts])
    assert offsets == [0, 128, 192] and stream.bits == 4
    back = enc.decode(stream)
    for p, off in zip(parts, offsets, strict=True):
        assert np.array_equal(back[off:off + p.size], p)
    # codebooks: one index stream, each table padded to 2**bits values; numpy and TIR agree
    from pfcompile.storage.decode import codebook_group_func

    books = [np.sort(RNG.standard_normal(k)).astype(np.float32) for k in (16, 11)]
    ws = [books[0][RNG.integers(0, 16, 1000)], books[1][RNG.integers(0, 11, 77)]]
    group, offsets = lift._codebook_group([enc.encode_codebook(w) for w in ws])
    assert offsets == [0, 1008 * 4] and group.tables.size == 32 and group.index.bits == 4
    ex = tvm.compile(tvm.IRModule({"main": codebook_group_func(4, "float32")}),
                     target=tvm.target.Target({"kind": "llvm", "num-cores": 1}))
    out = tvm.runtime.empty((group.n,), "float32", tvm.cpu())
    ex["main"](*[tvm.runtime.tensor(a) for a in (group.index.data, group.tables, group.starts)],
               out)
    for w, off in zip(ws, offsets, strict=True):
        assert np.array_equal(out.numpy()[off // 4:off // 4 + w.size], w)
        assert np.array_equal(group.decode()[off // 4:off // 4 + w.size], w)
    small = enc.encode_bits(RNG.integers(-30000, 30000, 300).astype(np.int32))
    wide = enc.encode_bits(RNG.integers(-100000, 100000, 400).astype(np.int32))
    big = enc.encode_bits(RNG.integers(-7, 8, 100000).astype(np.int32))
    assert (small.bits, wide.bits, big.bits) == (16, 18, 4)
    out = enc.widen_bits([small, wide, None, big])
    assert [e.bits if e is not None else None for e in out] == [18, 18, None, 4]
    assert np.array_equal(enc.decode(out[0]), enc.decode(small))


# ----------------------------------------------------------------------------- compiled
@pytest.fixture(scope="module")
def plain(trained, digits, tmp_path_factory):
    """PlainCNN (3 convs + Gemm on 8x8 digits): float, 8-bit, 4-bit, 4-bit codebook and
    75 %-sparse variants, as files."""
    tm = trained("PlainCNN")
    m = load_onnx(tm.onnx)
    cal = load_npz(digits.calib_npz, input_specs(m))
    root = tmp_path_factory.mktemp("storage_models")
    out = {"float": tm.onnx}
    for name, cfg in (("q8", QuantConfig(bits=8)), ("q4", QuantConfig(bits=4)),
                      ("cb4", QuantConfig(bits=4, codebook=True))):
        out[name] = root / f"{name}.onnx"
        onnx.save(as_proto(quantize(m, cfg, cal).model), out[name])
    out["sp75"] = root / "sp75.onnx"
    onnx.save(as_proto(sparsify(m, SparsifyConfig(sparsity=0.75)).model), out["sp75"])
    return out


def _outputs(model, xs):
    return np.concatenate([model(tvm.runtime.tensor(x[None])).numpy() for x in xs])


def test_packed_library_runs_like_the_unpacked_one(plain, digits, int8_target, tmp_path):
    """4-bit weights: the library stores them packed and decodes them once at load; its
    outputs are those of the same kernels with the weights as plain constants, through
    the loader (lifted) and through a plain ``vm["main"](x)`` alike."""
    q = load_onnx(plain["q4"])
    art = compile_model(q, int8_target, tmp_path / "packed")
    st = art.meta["storage"]
    # 4-bit codes, packed two a byte, plainly or without the lanes that the kernels' layout
    # pads with zeros, or as the non-zeros of a sparse layout where that is smaller
    encodings = {p["encoding"] for p in st["packed"] if p["dtype"] in ("int8", "int16")}
    assert st["lifted"] and "bits4" in encodings
    assert all(e in ("bits4", "sparse(bits4)") or (e.startswith("lanes") and e.endswith("(bits4)"))
               for e in encodings), encodings
    model = deploy.load(art.dir)
    assert model.name == deploy.LIFTED_FUNC and len(model.params) == 1
    plain_vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(art.so_path)), tvm.cpu())
    assert deploy.prepare(plain_vm).name == deploy.LIFTED_FUNC
    ex, _ = build_relax(import_onnx(q, input_specs(q)), int8_target, integer=True, pack=False)
    ref = deploy.prepare(tvm.relax.VirtualMachine(ex, tvm.cpu()))
    assert ref.name == deploy.MAIN_FUNC and ref.params == ()
    xs = digits.x_val[:8]
    want = _outputs(ref, xs)
    assert np.array_equal(_outputs(model, xs), want)
    assert np.array_equal(_outputs(lambda x: plain_vm["main"](x), xs), want)


def test_lifted_library_takes_its_params_as_a_closure(plain, int8_target, tmp_path):
    """``main_lifted``'s ``params`` (``main_model`` with the decoded weights bound) is checked
    to be a function with a short message: the library does not carry the weights' types
    as error text (~130 bytes a tensor) nor reads a tuple item per weight, and the kernels
    read their per-channel inputs from a few shared arrays."""
    art = compile_model(plain["q4"], int8_target, tmp_path / "q4")
    blob = art.so_path.read_bytes()
    assert b"annotation=T.Tuple" not in blob and b"params must be what" in blob
    assert b"vm.builtin.tuple_getitem" not in blob and b"vm.builtin.make_closure" in blob
    # at most bias / scale / offset of two epilogue kinds (this model's, 16 and 74 channels,
    # are each too small to pack; tests/test_quantexec_exact_bias.py checks the sharing)
    per_channel = [p for p in art.meta["storage"]["packed"] if len(p["shape"]) == 1]
    assert len(per_channel) <= 6
    assert art.meta["storage"]["packed"]  # the 4-bit weights are
    model = deploy.load(art.dir)
    x = tvm.runtime.tensor(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises((RuntimeError, ValueError, TypeError), match="params must be"):
        model.vm[deploy.LIFTED_FUNC](x, tvm.runtime.convert([]))  # an empty tuple


def test_vm_program_rewrites_keep_outputs_and_cut_bytes(plain, digits, tmp_path, monkeypatch):
    """``codegen.vmprog`` on the lowered module: the outputs are bit for bit those of the
    library without it (lifted and plain ``main``), and its VM program is smaller: no
    repeated ``alloc_tensor``, no one-element tensor constants, no input checks outside
    ``main_lifted``, short kernel names."""
    import re

    from pfcompile.codegen import pipeline
    from pfcompile.vm_bytes import vm_bytes

    host = load_target("host")
    xs = digits.x_val[:8]
    for name in ("q4", "cb4"):
        art = compile_model(plain[name], host, tmp_path / name)
        with monkeypatch.context() as m:
            m.setattr(pipeline, "shrink_vm_program_pass", lambda renamed=None: tvm.transform.module_pass(
                lambda mod, _c: mod, opt_level=0, name="identity"))
            ref = compile_model(plain[name], host, tmp_path / f"{name}_ref")
        a, r = deploy.load(art.dir), deploy.load(ref.dir)
        assert a.name == deploy.LIFTED_FUNC
        assert np.array_equal(_outputs(a, xs).view(np.uint32), _outputs(r, xs).view(np.uint32))
        main = _outputs(lambda x, a=a: a.vm["main"](x), xs)
        assert np.array_equal(main.view(np.uint32), _outputs(r, xs).view(np.uint32))
        # main's own input checks are gone; main_lifted's still catch a wrong input
        with pytest.raises((RuntimeError, ValueError), match="fn=main_lifted.*mismatch"):
            a.vm["main"](tvm.runtime.tensor(np.zeros((1, 1, 4, 4), np.float32)))
        va, vr = vm_bytes(art.so_path), vm_bytes(ref.so_path)
        assert va.program_bytes < vr.program_bytes - 500, (name, va.program_bytes, vr.program_bytes)
        assert va.counts["instructions"] < vr.counts["instructions"]
        allocs = [i.args for i in va.instructions if i.callee == "vm.builtin.alloc_tensor"
                  and i.function == deploy.MODEL_FUNC]
        assert allocs and len(set(allocs)) == len(allocs)
        ones = [c for c in va.constants if c[0] == "tensor" and int(np.prod(c[1])) == 1]
        assert not ones
        if name == "cb4":  # the fake quantisation's scales and zero points (before: tensors)
            assert any(c[0] == "tensor" and int(np.prod(c[1])) == 1 for c in vr.constants)
        checks = {i.function for i in va.instructions
                  if i.callee in ("vm.builtin.check_tensor_info", "vm.builtin.match_shape")}
        assert checks == {deploy.LIFTED_FUNC}
        kernels = [f for f, kind, _ in va.functions
                   if kind == 0 and not f.startswith(("vm.", "runtime."))]
        assert kernels and all(re.fullmatch(r"k\d+", f) for f in kernels), kernels


def test_four_bit_library_has_about_half_the_weight_bytes(plain, int8_target, tmp_path):
    sizes = {}
    for name in ("q8", "q4"):
        art = compile_model(plain[name], int8_target, tmp_path / name)
        sizes[name] = artifact_size(art.dir)
        assert sizes[name].size_bytes == (art.dir / "model.so").stat().st_size
        assert sizes[name].code_bytes + sizes[name].weight_bytes == sizes[name].size_bytes
        assert art.meta["size"] == sizes[name].to_json()
        if name == "q8":  # int8 weights once, 1 byte each (vpmaddwd's int16 pairs decoded at load)
            packed = [p for p in art.meta["storage"]["packed"] if p["dtype"] in ("int8", "int16")]
            # sparse / lanes: the zero-padded blocks of the kernels' layouts
            assert all(p["encoding"] in ("bits8", "sparse(bits8)") or (
                p["encoding"].startswith("lanes") and p["encoding"].endswith("(bits8)"))
                for p in packed), packed
            assert any(p["dtype"] == "int16" for p in packed) == (int8_target.name == "host-avx2")
        q = quant_report(load_onnx(plain[name]))
        channels = sum(32 if r["numel"] > 500 else 16 for r in q["layers"].values())
        # stored weights within 15 % of the quantize pass's packed size (+ the kernels'
        # int32 bias / multiplier / shift per channel, + layout padding of the first conv)
        stored = art.meta["storage"]["stored_bytes"]
        assert stored <= 1.15 * q["packed_bytes"] + 12 * channels + 1024, (name, stored, q)
        sizes[name + "_stored"] = stored
    # the weights: about half; the library's weight blob also holds the VM bytecode, a
    # few KB here (the load-time functions add ~2.5 KB), so its ratio is higher on so
    # small a model (0.59 on ResNet-20, tools/bench_size.py)
    ratio = sizes["q4_stored"] / sizes["q8_stored"]
    assert 0.45 < ratio < 0.62, (sizes, ratio)
    assert sizes["q8"].weight_bytes - sizes["q4"].weight_bytes > 0.8 * (
        sizes["q8_stored"] - sizes["q4_stored"]) - 3000
    # the same kernels; the 4-bit library adds its decoder (~0.5 KB). Compared as the
    # machine code itself (.text): code_bytes (the file less its weights) also holds the
    # linker's 4 KiB segment padding, and where the two files round to the same size (the
    # decoder pushing .text one byte over a page, the smaller weights then fitting the
    # same pages) the code_bytes differ by the weights' difference (6.3 KB here)
    text = {name: _text_bytes(tmp_path / name / "model.so") for name in ("q8", "q4")}
    assert abs(text["q4"] - text["q8"]) <= 1024, text
    assert abs(sizes["q4"].code_bytes - sizes["q8"].code_bytes) <= 4096 + 1024 + (
        sizes["q8"].weight_bytes - sizes["q4"].weight_bytes)


def _text_bytes(so_path) -> int:
    from elftools.elf.elffile import ELFFile

    with open(so_path, "rb") as f:
        return int(ELFFile(f).get_section_by_name(".text")["sh_size"])


def test_codebook_and_sparse_libraries_verify_and_are_small(plain, tmp_path):
    """A 4-bit codebook and 75 % unstructured sparsity (float kernels, blocked layouts)
    are stored as indices + table / bitmap + non-zeros, and measure verifies them."""
    host = load_target("host")
    f = compile_model(plain["float"], host, tmp_path / "float")
    assert not f.meta["storage"]["lifted"]
    assert deploy.load(f.dir).name == deploy.MAIN_FUNC
    for name, kind in (("cb4", "codebook4"), ("sp75", "sparse(raw)")):
        art = compile_model(plain[name], host, tmp_path / name)
        st = art.meta["storage"]
        assert {p["encoding"] for p in st["packed"]} == {kind}
        res = measure(art.dir, host)
        assert res["verified"] is True, res["detail"]
        size = artifact_size(art.dir)
        assert size.weight_bytes < 0.5 * artifact_size(f.dir).weight_bytes
    m = load_onnx(plain["sp75"])
    csr = sparsity_report(m)["total"]["csr_bytes"]
    assert stored_weight_bytes(m) < csr


def test_artifact_size_in_inspect_and_evaluate(plain, digits, tmp_path):
    art = compile_model(plain["q4"], "host", tmp_path / "a")
    size = artifact_size(art.dir)
    assert library_weight_bytes(art.so_path) == size.weight_bytes > 0
    r = subprocess.run([sys.executable, "-m", "pfcompile", "inspect", str(art.dir), "--json"],
                       capture_output=True, text=True, timeout=120, check=True)
    rep = json.loads(r.stdout)
    assert (rep["size_bytes"], rep["code_bytes"], rep["weight_bytes"]) == \
        (size.size_bytes, size.code_bytes, size.weight_bytes)
    assert rep["files"] == {"model.so": size.size_bytes}
    r = subprocess.run([sys.executable, "-m", "pfcompile", "evaluate", str(art.dir), "--data",
                        str(digits.val_npz), "--json"],
                       capture_output=True, text=True, timeout=120, check=True)
    ev = json.loads(r.stdout)
    assert ev["size_bytes"] == size.size_bytes and ev["weight_bytes"] == size.weight_bytes
    assert ev["top1"] > 0.8


def test_layers_with_the_same_kernel_share_its_code(digits, tmp_path):
    """ResNet-20 at 8 bits: layers with equal shapes, zero points and bounds run one
    kernel function (each copy costs ~4 KB of code): 22 layers, 12 kernels; 10 when the
    kernels of layers that differ only in spatial size take their sizes as arguments (the
    default), where that costs no speed: here the two 1x1 stride-2 shortcut convs and the
    two 3x3 stride-2 convs (blocked on both sides, as the residual adds run blocked)."""
    import torch

    from pfcompile import zoo
    from pfcompile.quantexec import lower_qdq, onnx_layer_names, prepare_qdq, with_int8_features

    torch.manual_seed(0)
    m = load_onnx(zoo.export_onnx(zoo.resnet20(), tmp_path / "r20.onnx", (1, 1, 8, 8)))
    q, _ = prepare_qdq(as_proto(quantize(m, QuantConfig(bits=8),
                                         load_npz(digits.calib_npz, input_specs(m))).model))
    for spatial, want in ((False, 12), (True, 10)):
        mod, reports = lower_qdq(import_onnx(q, input_specs(q)),
                                 with_int8_features(load_target("host-avx2")),
                                 onnx_layer_names(q), spatial=spatial)
        calls = [b.value for blk in mod["main"].body.blocks for b in blk.bindings
                 if getattr(getattr(b.value, "op", None), "name", "") == "relax.call_tir"]
        kernels = {str(c.args[0]) for c in calls}
        assert sum(r.path == "int8" for r in reports) == len(calls) == 22
        assert len(kernels) == want, (spatial, kernels)


def test_int8_weights_are_stored_once(trained, digits):
    """MobileNetV2Tiny at 8 bits: a projection conv whose output feeds the next block
    (through a QuantizeLinear) and a residual Add runs once, integer, with a float
    epilogue; no float copy of the conv or of its weights is left in the library."""
    from pfcompile.quantexec import lower_qdq, onnx_layer_names, prepare_qdq, with_int8_features
    from pfcompile.storage import StorageReport

    m = load_onnx(trained("MobileNetV2Tiny").onnx)
    q, _ = prepare_qdq(as_proto(quantize(m, QuantConfig(bits=8),
                                         load_npz(digits.calib_npz, input_specs(m))).model))
    target = load_target("host-avx2")
    mod, reports = lower_qdq(import_onnx(q, input_specs(q)), with_int8_features(target),
                             onnx_layer_names(q))
    ops = {getattr(getattr(b.value, "op", None), "name", "") for blk in mod["main"].body.blocks
           for b in blk.bindings}
    assert "relax.nn.conv2d" not in ops and "relax.matmul" not in ops
    assert all(r.path == "int8" for r in reports)
    st = StorageReport()
    build_relax(import_onnx(q, input_specs(q)), target, integer=True,
                     layer_names=onnx_layer_names(q), storage=st)
    weights = [t for t in st.tensors if len(t.shape) > 1]
    assert weights and all(t.dtype in ("int8", "int16") for t in weights), \
        [t for t in weights if t.dtype not in ("int8", "int16")]
    n_weights = sum(int(np.prod(t.dims)) for t in q.graph.initializer if t.data_type == 3)  # INT8
    # once, one byte each: vpmaddwd's int16 pairs are stored as 8-bit (decoded at load);
    # channel padding of the blocked layouts is all the rest
    assert sum(t.stored_bytes for t in weights) <= 1.1 * n_weights


def test_residual_adds_run_blocked_between_integer_convs(digits, tmp_path):
    """ResNet-20 at 8 bits: the residual Add, its ReLU and the QuantizeLinear after it run on
    the blocked ``[N, C/8, H*W, 8]`` activations of the integer convs around them, so every
    conv but the 1-channel stem reads and writes ``NCHW8c`` and one ``layout_transform``
    (before the global pool) is left; the outputs are bit for bit those of the build that
    runs them in NCHW."""
    from unittest import mock

    import torch

    from pfcompile import zoo
    from pfcompile.quantexec import (
        lower,
        lower_qdq,
        onnx_layer_names,
        prepare_qdq,
        with_int8_features,
    )

    torch.manual_seed(0)
    m = load_onnx(zoo.export_onnx(zoo.resnet20(), tmp_path / "r20.onnx", (1, 1, 8, 8)))
    q, _ = prepare_qdq(as_proto(quantize(m, QuantConfig(bits=8),
                                         load_npz(digits.calib_npz, input_specs(m))).model))
    tgt = with_int8_features(load_target("host-avx2"))
    mod, _ = lower_qdq(import_onnx(q, input_specs(q)), tgt, onnx_layer_names(q))
    ops: dict = {}
    for blk in mod["main"].body.blocks:
        for b in blk.bindings:
            ops.setdefault(getattr(getattr(b.value, "op", None), "name", ""), []).append(b)
    convs = [b for b in ops["relax.call_tir"] if "conv" in str(b.value.args[0])]
    # lower_qdq names every value it keeps blocked "<name>_nchw8c"
    io = [(b.value.args[1].fields[0].name.endswith("_nchw8c"), b.var.name.endswith("_nchw8c"))
          for b in convs]
    assert len(io) == 21 and io.count((True, True)) == 20 and io[0] == (False, True)
    assert len(ops["relax.layout_transform"]) == 1
    assert len(ops["relax.add"]) == 9
    assert all(b.var.name.endswith("_nchw8c") and int(b.var.ty.shape[-1]) == 8
               for b in ops["relax.add"] + ops["relax.nn.relu"] + ops["relax.quantize"][1:-1])
    x = digits.x_val[:4]
    outs = []
    for chains in (True, False):
        with mock.patch.object(lower, "_ELEMENTWISE", lower._ELEMENTWISE if chains else ()):
            ex, _ = build_relax(import_onnx(q, input_specs(q)), tgt, integer=True, pack=False)
        vm = deploy.prepare(tvm.relax.VirtualMachine(ex, tvm.cpu()))
        outs.append(_outputs(vm, x))
    assert np.array_equal(outs[0], outs[1])


def test_predicted_weight_bytes_follow_the_library_thresholds():
    """The search's prediction stores a tensor as the library would: a 4-bit tensor packed
    where it saves 256 bytes (decoded in a group), a codebook where it saves 1 KiB; the
    per-channel widths merged as the library merges them."""
    from onnx import helper, numpy_helper

    def model(*arrays):
        inits = [numpy_helper.from_array(a, f"t{i}") for i, a in enumerate(arrays)]
        g = helper.make_graph([], "g", [], [helper.make_tensor_value_info("t0", 1, None)], inits)
        return helper.make_model(g)

    small4 = RNG.integers(-8, 8, 600).astype(np.int8)    # saves 300 bytes: packed (was not)
    tiny4 = RNG.integers(-8, 8, 400).astype(np.int8)     # saves 200 bytes: raw
    book = np.sort(RNG.standard_normal(16)).astype(np.float32)
    cb = book[RNG.integers(0, 16, 600)]                  # saves 2100 bytes: codebook
    cb_small = book[RNG.integers(0, 16, 200)]            # saves 636 bytes < 1 KiB: raw
    want4 = enc.encode_bits(small4).nbytes
    assert want4 <= 301 and enc.choose(small4) is None  # the 1 KiB rule alone kept it raw
    assert stored_weight_bytes(model(small4)) == want4
    assert stored_weight_bytes(model(tiny4)) == 400
    assert stored_weight_bytes(model(cb_small)) == 800
    want_cb = enc.encode_codebook(cb).nbytes
    assert want_cb < 600 * 4 - 1024
    assert stored_weight_bytes(model(small4, tiny4, cb, cb_small)) == want4 + 400 + want_cb + 800
    # 16- and 18-bit per-channel arrays of a few hundred channels: one width (widened)
    b16 = RNG.integers(-30000, 30000, 300).astype(np.int32)
    b18 = RNG.integers(-100000, 100000, 400).astype(np.int32)
    assert stored_weight_bytes(model(b16, b18)) == enc.encode_bits_as(b16, 18, True).nbytes + \
        enc.encode_bits(b18).nbytes
    # an int32 bias's DequantizeLinear scale (x_scale * w_scale) is not stored by the library
    m = model(b18, RNG.random(400).astype(np.float32))
    m.graph.node.append(helper.make_node("DequantizeLinear", ["t0", "t1"], ["b"], axis=0))
    assert stored_weight_bytes(m) == enc.encode_bits(b18).nbytes
