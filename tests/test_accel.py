"""FPGA-style accelerator: targets, QDQ partition, tiling, instruction stream, bit-exact
simulator and cycle model (hand-computed cases), fallback and error paths."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pfcompile.accel import AccelConfig, compile_accel, load_accel_config, load_program
from pfcompile.accel.isa import emit_layer
from pfcompile.accel.mixed import quant_layers, set_layer_bits
from pfcompile.accel.qgraph import BITS_METADATA_KEY, QLayer, partition_model
from pfcompile.accel.reference import reference_layer
from pfcompile.accel.sim import execute_program, time_program
from pfcompile.accel.tiling import Tiling, TilingDB, candidates, footprint, search_tiling
from pfcompile.batching import require_batch_free
from pfcompile.errors import CompileError, ConfigError
from pfcompile.passes.ort_quantize import ort_quantize_qdq
from pfcompile.paths import demo_paths
from pfcompile.reference import reference_session
from pfcompile.targets import load_target

DEMO, DEMO_VAL, DEMO_CALIB = demo_paths()
VTA = load_accel_config("fpga-vta")
BF = load_accel_config("fpga-bitfusion")


# ----------------------------------------------------------------------------- helpers
def _layer(kind: str, c: int, o: int, h: int = 1, w: int = 1, k: int = 1, stride: int = 1,
           pad: int = 0, wbits: int = 8, abits: int = 8, seed: int = 0) -> QLayer:
    """A random integer layer (uint8 activations, symmetric int8 weights)."""
    rng = np.random.default_rng(seed)
    qmax = 2 ** (wbits - 1) - 1
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1
    return QLayer(name=f"{kind}_{c}x{o}", kind=kind, x="x", y="y",
                  weight=rng.integers(-qmax, qmax + 1, (o, c, k, k)).astype(np.int8),
                  bias=rng.integers(-2000, 2000, o).astype(np.int32), x_zero=3, x_scale=0.02,
                  w_scale=rng.uniform(0.002, 0.01, o).astype(np.float32), y_scale=0.05,
                  y_zero=0, y_dtype="uint8", stride=(stride, stride), pads=(pad,) * 4,
                  in_shape=(1, c, h, w), out_shape=(1, o, oh, ow), wbits=wbits, abits=abits,
                  relu=True)


def _x(layer: QLayer, n: int = 2, seed: int = 1) -> np.ndarray:
    hi = 2 ** layer.abits
    return np.random.default_rng(seed).integers(0, hi, (n,) + layer.in_shape[1:]).astype(np.uint8)


def _session(model: onnx.ModelProto):
    return reference_session(model)


@pytest.fixture(scope="module")
def demo_qdq(tmp_path_factory) -> onnx.ModelProto:
    """The trained demo model, quantized by onnxruntime (QDQ, per-channel int8 / uint8)."""
    tmp = tmp_path_factory.mktemp("accel")
    fm = require_batch_free(onnx.load(DEMO))
    onnx.save(fm, tmp / "demo_dyn.onnx")
    calib = np.load(DEMO_CALIB)["x"][:32]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnx.load(str(ort_quantize_qdq(tmp / "demo_dyn.onnx", tmp / "demo_qdq.onnx", calib,
                                              preprocess=False)))


@pytest.fixture(scope="module")
def val() -> tuple[np.ndarray, np.ndarray]:
    z = np.load(DEMO_VAL)
    return z["x"][:24], z["y"][:24]


# ----------------------------------------------------------------------------- targets
def test_fpga_targets_load_as_data():
    t = load_target("fpga-vta")
    assert t.is_accelerator and t.accelerator["block_in"] == 16
    assert (VTA.inp_bytes, VTA.wgt_bytes, VTA.acc_bytes) == (32 * 1024, 256 * 1024, 128 * 1024)
    assert not load_target("host").is_accelerator and load_target("host").accelerator == {}
    # BitFusion: (8/w)(8/a) throughput at 2/4/8 bits; widths in between round up
    assert BF.gemm_cycles_per_uop(8, 8) == 1.0
    assert BF.gemm_cycles_per_uop(4, 4) == 0.25 and BF.gemm_cycles_per_uop(2, 2) == 1 / 16
    assert BF.operand_bits(3, 8) == (4, 8) and BF.operand_bits(16, 8) is None
    assert VTA.gemm_cycles_per_uop(2, 2) == 1.0         # fixed int8 core


def test_unknown_accelerator_key_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown \\[accelerator\\] keys \\['gemm_per_cyle'\\]"):
        AccelConfig.from_dict({"gemm_per_cyle": 2}, name="typo")


# ----------------------------------------------------------------------------- cycle model
def test_single_gemm_tile_cycles_by_hand():
    """dense 16->16, batch 1: one tile of everything. Hand timeline (VTA figures):
    acc LOAD (compute) 64 B: overhead 32, DRAM 8 -> ends 40; inp LOAD (load) 16 B: DRAM
    free at 40 -> ends 42; wgt LOAD 256 B: starts 42, transfer after 32 overhead -> 74..106;
    GEMM waits for it: 106 + 4 + 1 uop = 111; ALU 1 vector x 6 ops x II 2 + 4 -> 127;
    STORE 16 B: 127 + 32 + 2 = 161."""
    layer = _layer("dense", 16, 16)
    t = Tiling(1, 1, 1)
    prog = emit_layer(layer, t, VTA)
    assert [(i.op, i.buf) for i in prog] == [("LOAD", "acc"), ("LOAD", "inp"), ("LOAD", "wgt"),
                                            ("GEMM", ""), ("ALU", ""), ("STORE", "acc")]
    gemm, store, wload = prog[3], prog[5], prog[2]
    assert gemm.pop_prev and wload.push_next and store.pop_prev and prog[4].push_next
    tm = time_program(prog, layer, VTA)
    assert tm.ends == [40, 42, 106, 111, 127, 161]
    assert tm.cycles == 161 and tm.gemm_uops == 1 and tm.dram_bytes == 64 + 16 + 256 + 16
    # the same tile on the bit-flexible target at 2x2 bits: 1/16 of a GEMM cycle
    l2 = replace(layer, wbits=2, abits=2, weight=np.clip(layer.weight, -1, 1).astype(np.int8))
    tm2 = time_program(emit_layer(l2, t, BF), l2, BF)
    # weights packed at 2 bits: 64 B -> 8 DRAM cycles; ALU II 1, 1 op
    assert tm2.ends[:3] == [40, 42, 82] and tm2.ends[3] == 82 + 4 + 1
    assert tm2.cycles == tm2.ends[3] + 4 + 1 + 32 + 2


def test_layer_whose_weights_exceed_the_buffer_is_split():
    """dense 1024->512 int8: 512 KB of weights > 256 KB weight buffer."""
    layer = _layer("dense", 1024, 512, seed=3)
    cands = candidates(layer, VTA)
    assert cands and all(footprint(layer, c, VTA)["wgt"] <= VTA.wgt_bytes for c in cands)
    # never the whole weight matrix at once: split along outputs, inputs or both
    assert all(c.oc_blocks * c.ic_blocks * 256 < 512 * 1024 for c in cands)
    tiling, cycles = search_tiling(layer, VTA)
    prog = emit_layer(layer, tiling, VTA)
    wloads = [i for i in prog if i.op == "LOAD" and i.buf == "wgt"]
    assert len(wloads) >= 2
    assert sum(i.nbytes for i in wloads) == 1024 * 512          # every weight loaded once
    tm = time_program(prog, layer, VTA)
    assert tm.cycles == cycles and tm.cycles >= 1024 * 512 / 8  # DRAM-bound lower bound
    x = _x(layer)
    y = execute_program(prog, layer, VTA, x.reshape(2, 1024, 1, 1))
    assert np.array_equal(y, reference_layer(layer, x.reshape(2, 1024, 1, 1)))


def test_dram_bound_1x1_conv():
    """1x1 conv 16->16 on 32x32 at 2x2 bits on the bit-flexible target, 8 row tiles of 4
    rows, double-buffered. GEMM: 1024 uops x 1/16 = 64 cycles; ALU 1024 vectors x 1.
    DRAM: 16 KB in + 16 KB out + 64 B of 2-bit weights (loaded once) + 8 x 64 B bias =
    33,344 B = 4,168 cycles at 8 B/cycle: DRAM-bound. On VTA the same layer is ALU-bound
    (1024 vectors x 6 ops x II 2 = 12,288 cycles)."""
    layer = _layer("conv2d", 16, 16, 32, 32, k=1, wbits=2, abits=2, seed=5)
    layer = replace(layer, weight=np.clip(layer.weight, -1, 1).astype(np.int8))
    fixed = Tiling(1, 1, 4, "oc_outer", True, True, True)
    tm = time_program(emit_layer(layer, fixed, BF), layer, BF)
    assert tm.dram_bytes == 16384 + 16384 + 64 + 8 * 64 and tm.dram_cycles == 4168
    assert tm.gemm_uops == 1024
    # compute work: 8 tiles x (GEMM 4 + 128/16, ALU 4 + 128) = 1,152 cycles << 4,168: the
    # layer takes the DRAM time plus pipeline fill and drain (< 300 cycles)
    assert 4168 <= tm.cycles <= 4168 + 300
    _, best = search_tiling(layer, BF)
    assert best <= tm.cycles
    _, cv = search_tiling(layer, VTA)
    assert cv >= 12288 and cv > 2.5 * best


def test_double_buffering_overlaps_load_and_compute():
    layer = _layer("conv2d", 64, 64, 16, 16, k=3, pad=1, seed=7)
    single = Tiling(4, 1, 4, "oc_outer", False, False, False)
    double = Tiling(4, 1, 4, "oc_outer", True, True, True)
    t1 = time_program(emit_layer(layer, single, VTA), layer, VTA).cycles
    t2 = time_program(emit_layer(layer, double, VTA), layer, VTA).cycles
    assert t2 < t1
    x = _x(layer, n=1)
    ref = reference_layer(layer, x)
    for t in (single, double, Tiling(1, 2, 3, "row_outer", True, True, True)):
        assert np.array_equal(execute_program(emit_layer(layer, t, VTA), layer, VTA, x), ref)


@pytest.mark.parametrize("cfg", [VTA, BF], ids=["vta", "bitfusion"])
def test_every_candidate_tiling_is_bit_exact(cfg):
    layer = _layer("conv2d", 24, 40, 9, 11, k=3, stride=2, pad=1, wbits=4, abits=4, seed=11)
    x = _x(layer, n=2)
    ref = reference_layer(layer, x)
    cands = candidates(layer, cfg)
    assert len(cands) > 4
    for t in cands:
        assert np.array_equal(execute_program(emit_layer(layer, t, cfg), layer, cfg, x), ref), t


def test_tile_that_cannot_fit_is_a_compile_error_naming_the_layer():
    tiny = replace(VTA, inp_buffer_kb=1, name="tiny")
    layer = _layer("conv2d", 16, 16, 8, 40, k=3, pad=1)      # 16 ch x 3 rows x 42 cols > 1 KB
    with pytest.raises(CompileError, match=r"layer 'conv2d_16x16'.*smallest tile.*inp tile 2016 B"):
        candidates(layer, tiny)


# ----------------------------------------------------------------------------- whole models
def _ort_integer_tensors(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> dict:
    m = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in m.graph.output}
    for n in names:
        if n not in known:
            m.graph.output.append(helper.make_empty_tensor_value_info(n))
    sess = _session(m)
    out = sess.run(names, {"input": x})
    return dict(zip(names, out))


@pytest.mark.parametrize("target", ["fpga-vta", "fpga-bitfusion"])
@pytest.mark.parametrize("mixed", [False, True], ids=["int8", "mixed"])
def test_model_bit_exact_and_within_one_step_of_onnxruntime(demo_qdq, val, target, mixed):
    model = demo_qdq
    if mixed:
        names = quant_layers(model)
        model = set_layer_bits(model, {names[1]: (4, 4), names[2]: (2, 8), names[4]: (4, 8)})
    prog = compile_accel(model, target)
    assert len(prog.layers) >= 8 and prog.fallbacks            # the depthwise conv stays on host
    assert any("grouped" in why for why in prog.fallbacks.values())
    x = val[0]
    trace: dict[str, np.ndarray] = {}
    out, stats = prog.run({"input": x}, trace=trace)
    # 1) the accelerator equals the numpy reference of the integer layer, exactly
    for c in prog.layers:
        ref = reference_layer(c.layer, trace[c.layer.x])
        assert np.array_equal(ref.reshape(trace[c.layer.y].shape), trace[c.layer.y]), c.layer.name
    # 2) per layer, on onnxruntime's own integer input, within one quantisation step of it
    names = [n for c in prog.layers for n in (c.layer.x, c.layer.y)]
    ort_t = _ort_integer_tensors(model, x, names)
    for c in prog.layers:
        xo = ort_t[c.layer.x].reshape((len(x),) + c.layer.in_shape[1:])
        mine = execute_program(c.insns, c.layer, prog.cfg, xo).astype(np.int32)
        theirs = ort_t[c.layer.y].reshape(mine.shape).astype(np.int32)
        assert np.abs(mine - theirs).max() <= 1, c.layer.name
    # 3) the whole model: same predictions as onnxruntime's QDQ execution on nearly all
    ref_logits = _session(model).run(None, {"input": x})[0]
    agree = (out["logits"].argmax(1) == ref_logits.argmax(1)).mean()
    assert agree >= 0.95
    assert stats.accel_cycles == sum(c.timing.cycles for c in prog.layers) > 0
    if mixed:
        bits = {c.layer.name: (c.layer.wbits, c.layer.abits) for c in prog.layers}
        assert bits[quant_layers(model)[1]] == (4, 4) and bits[quant_layers(model)[2]] == (2, 8)


def test_mixed_precision_is_faster_on_bitfusion_only(demo_qdq):
    names = quant_layers(demo_qdq)
    low = set_layer_bits(demo_qdq, {n: (4, 4) for n in names})
    c8 = {t: compile_accel(demo_qdq, t).accel_cycles for t in ("fpga-vta", "fpga-bitfusion")}
    c4 = {t: compile_accel(low, t).accel_cycles for t in ("fpga-vta", "fpga-bitfusion")}
    assert c4["fpga-bitfusion"] < 0.7 * c8["fpga-bitfusion"]
    assert c4["fpga-vta"] <= c8["fpga-vta"] and c4["fpga-vta"] > 0.85 * c8["fpga-vta"]


def test_unsupported_bit_width_falls_back_to_host_with_warning(demo_qdq, val):
    names = quant_layers(demo_qdq)
    m = onnx.ModelProto.FromString(demo_qdq.SerializeToString())
    e = m.metadata_props.add()
    e.key, e.value = BITS_METADATA_KEY, json.dumps({names[1]: {"w": 16, "a": 8}})
    with pytest.warns(UserWarning, match=f"layer '{names[1]}' has 16-bit weights.*host CPU"):
        part = partition_model(m, BF)
    assert names[1] not in {lay.name for lay in part.layers}
    assert names[1] in part.fallbacks
    assert any(names[1] in seg.nodes for seg in part.segments)   # it runs in a host segment
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = compile_accel(m, "fpga-bitfusion")
    x = val[0][:16]
    out, _ = prog.run({"input": x})
    ref = _session(demo_qdq).run(None, {"input": x})[0]
    assert (out["logits"].argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_compile_error_names_the_layer_in_a_model(demo_qdq):
    tiny = replace(VTA, inp_buffer_kb=1, name="tiny")
    with pytest.raises(CompileError, match=r"layer '[^']*Conv[^']*'.*cannot be tiled"):
        compile_accel(demo_qdq, tiny)


def test_program_file_round_trip_and_tiling_records(demo_qdq, val, tmp_path):
    db_path = tmp_path / "schedules" / "fpga-vta" / "accel_tiling.jsonl"
    prog = compile_accel(demo_qdq, "fpga-vta", records=db_path)
    lines = [json.loads(s) for s in db_path.read_text().splitlines()]
    assert lines and {"workload", "tiling", "cycles", "config"} <= set(lines[0])
    workloads = {json.dumps(r["workload"], sort_keys=True) for r in lines}
    assert len(workloads) == len(lines) <= len(prog.layers)      # one record per workload
    db = TilingDB(db_path)
    for c in prog.layers:
        assert db.lookup(prog.cfg, c.layer) == c.tiling
    again = compile_accel(demo_qdq, "fpga-vta", records=db_path, search=False)
    assert [c.tiling for c in again.layers] == [c.tiling for c in prog.layers]
    assert len(db_path.read_text().splitlines()) == len(lines)   # nothing new appended
    path = prog.save(tmp_path / "prog.npz")
    loaded = load_program(path)
    x = val[0][:8]
    a, sa = prog.run({"input": x})
    b, sb = loaded.run({"input": x})
    assert np.array_equal(a["logits"], b["logits"]) and sa.accel_cycles == sb.accel_cycles


def test_float_bias_behind_identity_is_read(demo_qdq):
    """ORT leaves a shared bias as float behind Identity; the partition still claims it."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (16, 16, 1, 1)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "w_q"),
             numpy_helper.from_array(np.full(16, 0.01, np.float32), "w_s"),
             numpy_helper.from_array(np.zeros(16, np.int8), "w_z"),
             numpy_helper.from_array(np.float32(0.02), "x_s"),
             numpy_helper.from_array(np.uint8(10), "x_z"),
             numpy_helper.from_array(np.float32(0.05), "y_s"),
             numpy_helper.from_array(np.uint8(0), "y_z"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"], name="qx"),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"], name="dqx"),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wd"], name="dqw", axis=0),
             helper.make_node("Identity", ["b"], ["b2"], name="idb"),
             helper.make_node("Conv", ["xd", "wd", "b2"], ["c"], name="conv"),
             helper.make_node("QuantizeLinear", ["c", "y_s", "y_z"], ["yq"], name="qy"),
             helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["y"], name="dqy")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 4, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    prog = compile_accel(m, "fpga-vta")
    assert [c.layer.name for c in prog.layers] == ["conv"]
    x = rng.standard_normal((1, 16, 4, 4)).astype(np.float32)
    out, _ = prog.run({"x": x})
    ref = _session(m).run(None, {"x": x})[0]
    assert np.abs(out["y"] - ref).max() <= 0.05 + 1e-6                # one output step


# ----------------------------------------------------------------------------- bit widths
def test_narrow_widths_buy_cycles_on_bitfusion_activations_nothing_on_vta(demo_qdq):
    """What a per-layer bit search on these targets can find (the cycle model, best tiling):
    on the bit-flexible core narrower weights and activations are faster on every layer;
    on VTA's int8 core an activation width buys nothing and a weight width only DMA bytes."""
    def cycles(cfg, lay, w, a):
        return search_tiling(replace(lay, wbits=w, abits=a), cfg)[1]

    for cfg in (BF, VTA):
        layers = partition_model(demo_qdq, cfg).layers
        assert len(layers) == 11
        for lay in layers:
            c88, c48, c84 = (cycles(cfg, lay, w, a) for w, a in ((8, 8), (4, 8), (8, 4)))
            if cfg is BF:
                assert c48 < c88 and c84 < c88 and cycles(cfg, lay, 4, 4) < min(c48, c84)
            else:
                assert c84 == c88 and c48 <= c88
    stem = partition_model(demo_qdq, BF).layers[0]
    assert cycles(BF, stem, 8, 8) / cycles(BF, stem, 4, 4) > 2.0
    vta_stem = partition_model(demo_qdq, VTA).layers[0]
    assert cycles(VTA, vta_stem, 8, 8) / cycles(VTA, vta_stem, 4, 4) < 1.01
