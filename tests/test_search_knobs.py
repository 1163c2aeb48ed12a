"""Per-layer bits / sparsity knobs in `pfcompile run`'s search space: choices from the
target, compress (keep -> sparsity -> bits with the real passes), the kernels the
latency model sees, the stored size, strategies, the NULL-device loop and the CLI
flags; one real end-to-end run on the host (slow)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import typer
from onnx import numpy_helper
from typer.testing import CliRunner

from pfcompile.errors import ConfigError, PassError, SearchError
from pfcompile.measure import QUANT_RANGE_FRACTION
from pfcompile.model import load_onnx, model_hash
from pfcompile.passes.qlayers import as_ir, weighted_layers
from pfcompile.passes.sparsify import SparsifyConfig, sparsity_report
from pfcompile.passes.stats import model_size_mb
from pfcompile.paths import demo_paths
from pfcompile.reference import reference_session
from pfcompile.search.devices import NullDevice, kernel_model
from pfcompile.search.graph import extract_kernels
from pfcompile.search.knobs import bit_choices, parse_bits, parse_sparsity, sparsity_choices
from pfcompile.search.loop import SearchSettings, run_search
from pfcompile.search.space import build_space, compress
from pfcompile.search.strategies import Goal, make_strategy
from pfcompile.targets import load_target

VAL_N, CALIB_N = 160, 32   # validation images scored, calibration samples, here


@pytest.fixture(scope="module")
def fast(fast_settings):
    return replace(fast_settings, budget=3, batch=3, max_acc_drop=5.0)


@pytest.fixture(scope="module")
def host():
    return load_target("host")


@pytest.fixture(scope="module")
def space(demo, host):
    return build_space(demo.model, host.hardware, bits=(32, 8), sparsity=(0.0, 0.25, 0.5))


def _ort(model, x):
    s = reference_session(model)
    return np.concatenate([s.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


def _layers(m):
    return [x.name for x in weighted_layers(as_ir(m))]


# ----------------------------------------------------------------------------- choices
def test_bit_choices_come_from_the_target(host):
    assert bit_choices(host) == (32, 8)
    bf, vta = load_target("fpga-bitfusion"), load_target("fpga-vta")
    assert bit_choices(bf) == (32, 8, 4, 2)  # [accelerator] weight_bits = [2, 4, 8]
    assert bit_choices(bf, include_float=False) == (8, 4, 2)
    assert bit_choices(vta) == (32, 8, 7, 6, 5, 4, 3, 2)
    assert parse_bits("auto", bf) == (32, 8, 4, 2)
    assert parse_bits("8,32", host) == parse_bits("8", host) == parse_bits([8], host) == (32, 8)
    assert parse_bits(None, host) is None and parse_bits("off", host) is None
    # narrower widths run the int8 kernels but are stored packed: listed, or offered by
    # auto when the search has a size goal
    assert parse_bits("4,32", host) == (32, 4)
    assert parse_bits("auto", host) == (32, 8)
    assert parse_bits("auto", host, size_goal=True) == bit_choices(host, size_goal=True) == (32, 8, 4)
    with pytest.raises(ConfigError, match=r"'host' runs layers at \[32, 8, 7, 6, 5, 4, 3, 2\].*not 1"):
        parse_bits("1,32", host)
    with pytest.raises(ConfigError, match=r"'fpga-bitfusion' runs layers at \[32, 8, 4, 2\].*not 3"):
        parse_bits("3", bf)
    with pytest.raises(ConfigError, match="'eight' is not an integer"):
        parse_bits("eight", host)
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_bits("8,,32", host)


def test_sparsity_choices_come_from_the_sparsify_pass():
    declared = SparsifyConfig.search_space()["sparsity"]["search"]
    assert sparsity_choices() == tuple(float(s) for s in declared)
    assert parse_sparsity("auto") == tuple(sorted(float(s) for s in declared))
    assert parse_sparsity("0.5,0.75") == (0.0, 0.5, 0.75)
    assert parse_sparsity(None) is None
    with pytest.raises(ConfigError, match=r"1.0 is not in \[0, 1\)"):
        parse_sparsity("0.5,1")
    with pytest.raises(ConfigError, match="'half' is not a number"):
        parse_sparsity("half")
    with pytest.raises(ConfigError, match="not in"):
        SearchSettings(sparsity="-0.5")


# ----------------------------------------------------------------------------- space
def test_space_has_one_bits_and_one_sparsity_knob_per_layer(demo, host, space):
    m = demo.model
    layers = _layers(m)
    assert len(layers) == 12
    kinds = [k.kind for k in space.knobs]
    assert kinds.count("keep") == 7 and kinds.count("bits") == 12 and kinds.count("sparsity") == 12
    assert space.kinds() == ("keep", "sparsity", "bits")
    for k in space.knobs:
        if k.kind == "bits":
            assert k.choices == (32, 8) and k.default == 32 and k.target in layers
            assert k.name == f"bits:{k.target}"
        elif k.kind == "sparsity":
            assert k.choices == (0.0, 0.25, 0.5) and k.default == 0.0
    # asked for nothing: the keep-only space of before
    plain = build_space(m, host.hardware)
    assert [k.kind for k in plain.knobs] == ["keep"] * 7
    assert build_space(m, host.hardware, bits=(32,)).knobs == plain.knobs  # one choice: no knob
    with pytest.raises(ConfigError, match="distinct"):
        build_space(m, host.hardware, bits=(8, 8))
    # bad values name the knob
    name = next(k.name for k in space.knobs if k.kind == "bits")
    with pytest.raises(ConfigError, match=f"knob '{name}'.*not one of"):
        space.validate({name: 4})
    with pytest.raises(ConfigError, match="unknown knob"):
        space.validate({"bits:/no/such/Conv": 8})


def test_accelerator_space_offers_its_widths(demo):
    bf = load_target("fpga-bitfusion")
    sp = build_space(demo.model, bf.hardware, bits=parse_bits("auto", bf))
    bits = [k for k in sp.knobs if k.kind == "bits"]
    assert len(bits) == 12 and all(k.choices == (32, 8, 4, 2) and k.default == 32 for k in bits)


# ----------------------------------------------------------------------------- compress
def test_default_config_is_the_unmodified_model(demo, space):
    m = demo.model
    same = compress(m, space, space.default())
    assert model_hash(same) == model_hash(m)


def test_bits_knobs_quantize_with_the_quantize_pass(demo, space):
    m, val, cal = demo.model, demo.val.subset(VAL_N), demo.calib.subset(CALIB_N)
    cfg = {**space.default(), **{k.name: 8 for k in space.knobs if k.kind == "bits"}}
    q = compress(m, space, cfg, cal)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("DequantizeLinear") >= 12 + 1 and "QuantizeLinear" in ops
    assert sum(t.data_type == 3 and t.name.endswith("_q") for t in q.graph.initializer) == 12
    ks = extract_kernels(q)
    anchors = [k for k in ks if k.w_shape]
    assert len(anchors) == 12 and all(k.bits == 8 for k in anchors)
    assert [k.op for k in ks] == [k.op for k in extract_kernels(m)]  # Q/DQ are not kernels
    x = val.inputs["input"][:100]
    ref, got = _ort(m, x), _ort(q, x)
    assert np.abs(got - ref).max() <= QUANT_RANGE_FRACTION * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.97
    # deterministic
    assert model_hash(compress(m, space, cfg, cal)) == model_hash(q)


def test_one_bits_knob_quantizes_that_layer_only(demo, space):
    m, val, cal = demo.model, demo.val.subset(VAL_N), demo.calib.subset(CALIB_N)
    layer = _layers(m)[4]
    q = compress(m, space, {**space.default(), f"bits:{layer}": 8}, cal)
    assert sum(t.data_type == 3 and t.name.endswith("_q") for t in q.graph.initializer) == 1
    bits = {k.nodes[0]: k.bits for k in extract_kernels(q) if k.w_shape}
    assert bits[layer] == 8 and sum(b == 8 for b in bits.values()) == 1
    x = val.inputs["input"][:50]
    ref, got = _ort(m, x), _ort(q, x)
    assert np.abs(got - ref).max() <= QUANT_RANGE_FRACTION * np.abs(ref).max()


def test_bits_without_calibration_data_is_a_pass_error_naming_the_knob(demo, space):
    m = demo.model
    layer = _layers(m)[0]
    with pytest.raises(PassError, match=f"bits:{layer}.*calibration data"):
        compress(m, space, {**space.default(), f"bits:{layer}": 8})


def test_sparsity_knob_zeros_that_layer_like_magnitude_pruning(demo, space):
    m, val = demo.model, demo.val.subset(VAL_N)
    layer = _layers(m)[5]  # /b2/c2/c2.0/Conv, 32x32x3x3
    s = compress(m, space, {**space.default(), f"sparsity:{layer}": 0.5})
    rep = {r["layer"]: r for r in sparsity_report(s)["layers"]}
    assert rep[layer]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert all(r["sparsity"] < 0.01 for n, r in rep.items() if n != layer)
    # independent reference: zero the half of that weight with the smallest |w| by hand
    ref = load_onnx(demo_paths()[0])
    wname = next(x.weight.name for x in weighted_layers(as_ir(m)) if x.name == layer)
    t = next(t for t in ref.graph.initializer if t.name == wname)
    w = numpy_helper.to_array(t).copy()
    flat = w.reshape(-1)
    flat[np.argsort(np.abs(flat), kind="stable")[: flat.size // 2]] = 0
    t.CopyFrom(numpy_helper.from_array(w, wname))
    x = val.inputs["input"][:20]
    np.testing.assert_allclose(_ort(s, x), _ort(ref, x), atol=1e-5)


def test_keep_then_sparsity_then_bits(demo, space):
    m, val, cal = demo.model, demo.val.subset(VAL_N), demo.calib.subset(CALIB_N)
    cfg = space.uniform(0.5)
    layers = _layers(m)
    cfg.update({f"sparsity:{layers[2]}": 0.25, f"bits:{layers[2]}": 8, f"bits:{layers[9]}": 8})
    c = compress(m, space, cfg, cal)
    shapes = {k.nodes[0]: k for k in extract_kernels(c) if k.w_shape}
    pruned = {k.nodes[0]: k for k in extract_kernels(compress(m, space, space.uniform(0.5))) if k.w_shape}
    assert {n: k.w_shape for n, k in shapes.items()} == {n: k.w_shape for n, k in pruned.items()}
    assert {n for n, k in shapes.items() if k.bits == 8} == {layers[2], layers[9]}
    # the sparsity is applied before quantizing: the int8 weight keeps the zeros
    node = next(n for n in c.graph.node if n.name == layers[2])
    dq = next(n for n in c.graph.node if n.output[0] == node.input[1])
    wq = next(numpy_helper.to_array(t) for t in c.graph.initializer if t.name == dq.input[0])
    assert dq.op_type == "DequantizeLinear" and wq.dtype == np.int8
    assert (wq == 0).mean() >= 0.25
    assert model_hash(compress(m, space, cfg, cal)) == model_hash(c)
    assert _ort(c, val.inputs["input"][:2]).shape == (2, 10)


# ----------------------------------------------------------------------------- latency side
def test_int8_kernel_models_are_qdq_and_keep_their_key(demo, space):
    m, cal = demo.model, demo.calib.subset(CALIB_N)
    cfg = {**space.default(), **{k.name: 8 for k in space.knobs if k.kind == "bits"}}
    for k in extract_kernels(compress(m, space, cfg, cal)):
        if k.bits != 8:
            continue
        km = kernel_model(k)
        ops = [n.op_type for n in km.graph.node]
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops, ops
        back = extract_kernels(km)
        assert len(back) == 1 and back[0].key == k.key  # the latency model sees the same kernel
        feeds = {i.name: np.ones([d.dim_value for d in i.type.tensor_type.shape.dim], np.float32)
                 for i in km.graph.input}
        out = reference_session(km).run(None, feeds)
        assert out[0].shape == k.out_shape


# ----------------------------------------------------------------------------- size
def test_size_counts_stored_bytes(demo, space):
    m, cal = demo.model, demo.calib.subset(CALIB_N)
    n_params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    assert model_size_mb(m) == pytest.approx(4 * n_params / 1e6)  # all float32
    q = compress(m, space, {**space.default(), **{k.name: 8 for k in space.knobs if k.kind == "bits"}}, cal)
    weights = sum(x.weight_array.size for x in weighted_layers(as_ir(m)))
    int8_w = [numpy_helper.to_array(t) for t in q.graph.initializer if t.name.endswith("_q")]
    assert all(w.dtype == np.int8 for w in int8_w) and sum(w.size for w in int8_w) == weights
    stored = sum(numpy_helper.to_array(t).nbytes for t in q.graph.initializer)
    assert model_size_mb(q) == pytest.approx(stored / 1e6)  # int8 at 1 byte, float at 4
    assert model_size_mb(q) < 0.3 * model_size_mb(m)
    # zeros are stored densely (no sparse format anywhere downstream): same size
    s = compress(m, space, {**space.default(), **{k.name: 0.5 for k in space.knobs if k.kind == "sparsity"}})
    assert model_size_mb(s) == model_size_mb(m)


# ----------------------------------------------------------------------------- strategies
def test_strategies_handle_or_refuse_the_new_kinds(space):
    rng = np.random.default_rng(0)
    d = space.default()
    for _ in range(20):
        cfg = space.mutate(d, rng, n=3)
        space.validate(cfg)
        space.validate(space.sample_around(rng, 0.7))
    samples = [space.sample(rng) for _ in range(10)]
    assert any(v == 8 for c in samples for n, v in c.items() if n.startswith("bits:"))
    assert any(v > 0 for c in samples for n, v in c.items() if n.startswith("sparsity:"))
    lat, drop = (lambda c: 1.0), (lambda c: 0.0)
    for name in ("hw", "random", "tpe", "bo"):
        st = make_strategy(name, space, Goal(1.0), 0, 4, lat, drop, pool=4)
        props = st.propose(2)
        assert props, name
        for c in props:
            space.validate(c.config)
    with pytest.raises(SearchError, match="'rl'.*cannot search bits/sparsity"):
        make_strategy("rl", space, Goal(1.0), 0, 4, lat, drop)
    with pytest.raises(SearchError, match="'uniform'.*bits/sparsity"):
        make_strategy("uniform", space, Goal(1.0), 0, 4)


def test_size_goal_ranks_by_predicted_size(space):
    """hw with --size-mb: the pool is ranked by the predicted stored size too."""
    n8 = lambda c: sum(v == 8 for n, v in c.items() if n.startswith("bits:"))
    st = make_strategy("hw", space, Goal(5.0, size_mb=0.2), 0, 4, lambda c: 1.0, lambda c: 0.0,
                       pool=16, size_of=lambda c: 0.4 - 0.03 * n8(c))
    props = st.propose(2)
    assert all(0.4 - 0.03 * n8(p.config) <= 0.2 for p in props[:1])
    # nothing in the pool fits: the nearest to the budget comes first
    far = make_strategy("hw", space, Goal(5.0, size_mb=0.01), 0, 4, lambda c: 1.0, lambda c: 0.0,
                        pool=16, size_of=lambda c: 0.4 - 0.03 * n8(c))
    pool = far._pool()
    far.rng = np.random.default_rng(0)
    top = far.propose(1)[0]
    assert n8(top.config) == max(n8(c) for c in pool)


# ----------------------------------------------------------------------------- loop / CLI
def test_null_device_search_with_bits_and_sparsity(tmp_path, demo, host, fast):
    m, val, cal = demo.model, demo.val.subset(VAL_N), demo.calib.subset(CALIB_N)
    s = replace(fast, strategy="hw", bits="8,32", sparsity="0,0.25", seed=1)
    res = run_search(m, host, NullDevice(), val, tmp_path / "run", s, cache_dir=tmp_path / "c", calib=cal)
    assert len(res.trials) == 3
    recs = [json.loads(x) for x in (tmp_path / "run" / "trials.jsonl").read_text().splitlines()]
    trials = [r for r in recs if r["type"] == "trial"]
    assert len(trials) == 3
    for r in trials:
        assert any(k.startswith("bits:") for k in r["config"])
        assert any(k.startswith("sparsity:") for k in r["config"])
        assert r["bits"] == {k.removeprefix("bits:"): v for k, v in r["config"].items()
                             if k.startswith("bits:") and v != 32}
        assert "sparsity" in r
    assert any(r["bits"] for r in trials), "no trial quantized a layer"
    quant = [r for r in trials if r["bits"] and r["status"] == "ok"]
    assert quant and all(r["size_mb"] < res.baseline["size_mb"] for r in quant)
    kern = [x for r in recs if r["type"] == "kernels" for x in r["items"]]
    assert any(x["kernel"]["bits"] == 8 for x in kern), "no int8 kernel reached the latency model"
    # resuming with other knobs is refused
    with pytest.raises(SearchError, match="--bits"):
        run_search(m, host, NullDevice(), val, tmp_path / "run",
                   replace(fast, strategy="hw", sparsity="0,0.25", seed=1), calib=cal)


def test_null_device_search_bits_without_calib_uses_data(tmp_path, demo, host, fast):
    m, val = demo.model, demo.val.subset(VAL_N)
    s = replace(fast, strategy="random", bits=(8, 32), seed=0, budget=2)
    res = run_search(m, host, NullDevice(), val, tmp_path / "run", s)
    assert all(t["status"] == "ok" for t in res.trials)
    assert any(t["bits"] for t in res.trials)
    # resume with the same knobs given as a tuple (the log holds a JSON list): accepted
    more = run_search(m, host, NullDevice(), val, tmp_path / "run",
                      replace(fast, strategy="random", bits=(8, 32), seed=0, budget=3))
    assert len(more.trials) == 3 and more.trials[:2] == res.trials


def _app():
    from pfcompile.cli import app

    assert isinstance(app, typer.Typer)
    return app


def test_cli_bits_and_sparsity_flags(tmp_path):
    out = tmp_path / "dist"
    res = CliRunner().invoke(_app(), ["run", "--null-device", "--budget", "2", "--max-acc-drop", "5",
                                      "--strategy", "random", "--bits", "auto", "--sparsity", "0,0.5",
                                      "-o", str(out), "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    trials = [json.loads(x) for x in (out / "run" / "trials.jsonl").read_text().splitlines()]
    meta = trials[0]
    assert meta["settings"]["bits"] == "auto" and meta["settings"]["sparsity"] == "0,0.5"
    assert sum(t["type"] == "trial" for t in trials) == 2
    bad = CliRunner().invoke(_app(), ["run", "--null-device", "--bits", "9", "-o", str(tmp_path / "x")])
    assert isinstance(bad.exception, ConfigError) and "not 9" in str(bad.exception)


# ----------------------------------------------------------------------------- real device (slow)
@pytest.mark.slow
def test_host_end_to_end_with_bits(tmp_path, demo, host):
    """`pfcompile run --bits 8,32 --budget 2` on the demo, measured on this machine over
    local TVM RPC: the int8 candidates compile through quantexec, pass the device's check
    against onnxruntime and are timed; the kernels the latency model sees are integer
    exactly where the compiler's layer report says so; an int8 kernel times on the device."""
    from pfcompile.device import free_port, serve
    from pfcompile.search import DeviceSpec, RunConfig, run
    from pfcompile.search.devices import RPCDevice

    s = SearchSettings(strategy="random", budget=2, bits="8,32", max_acc_drop=5.0, eval_subset=64, seed=0)
    rep = run(RunConfig(settings=s, out_dir=tmp_path / "dist", cache_dir=tmp_path / "c",
                        device=DeviceSpec(port_range=(9500, 9549)), final_repeats=0))
    assert rep["trials"] == 2
    run_dir = tmp_path / "dist" / "run"
    trials = [json.loads(x) for x in (run_dir / "trials.jsonl").read_text().splitlines()]
    quant = [t for t in trials if t["type"] == "trial" and t["bits"]]
    assert quant, "no trial quantized a layer"
    for t in quant:
        assert t["status"] == "ok", t["error"]
        assert t["latency_ms"] > 0
        art = run_dir / "artifacts" / t["model_hash"]
        layers = {x["node"]: x["path"] for x in json.loads((art / "model.json").read_text())["layers"]}
        kernels = {k.nodes[0]: k.bits for k in extract_kernels(load_onnx(art / "source.onnx")) if k.w_shape}
        assert layers == {n: ("int8" if b < 32 else "float") for n, b in kernels.items()}
        assert {n for n, b in kernels.items() if b == 8} == set(t["bits"])

    m, cal = demo.model, demo.calib.subset(CALIB_N)
    sp = build_space(m, host.hardware, bits=(32, 8))
    k8 = next(k for k in extract_kernels(compress(m, sp, {**sp.default(), **{
        k.name: 8 for k in sp.knobs if k.kind == "bits"}}, cal)) if k.bits == 8 and k.op == "conv")
    srv = serve(host, "127.0.0.1", free_port("127.0.0.1", 9500, 9549))
    try:
        dev = RPCDevice(host, port=srv.port, number=5, repeat=3, min_repeat_ms=0)
        times = dev.measure_kernels([k8])
    finally:
        srv.stop()
    assert times[0] is not None and 0 < times[0] < 1000


def test_report_names_the_best_candidates_layer_knobs(tmp_path, demo, host, fast):
    from pfcompile.search.report import build_report

    m, val, cal = demo.model, demo.val.subset(VAL_N), demo.calib.subset(CALIB_N)
    s = replace(fast, strategy="random", bits="8,32", sparsity="0,0.25", seed=3, budget=2,
                max_acc_drop=100.0)
    res = run_search(m, host, NullDevice(), val, tmp_path / "run", s, calib=cal)
    rep = build_report(res)
    assert rep["best"] is not None
    assert rep["best"]["bits"] == res.best["bits"] and rep["best"]["sparsity"] == res.best["sparsity"]


def test_integer_only_space_quantizes_its_default(demo):
    """bit_choices(include_float=False): the default (widest integer) config is applied."""
    m, cal = demo.model, demo.calib.subset(CALIB_N)
    bf = load_target("fpga-bitfusion")
    sp = build_space(m, bf.hardware, bits=bit_choices(bf, include_float=False))
    assert all(k.default == 8 for k in sp.knobs if k.kind == "bits")
    q = compress(m, sp, sp.default(), cal)
    assert sum(t.name.endswith("_q") for t in q.graph.initializer) == 12
    four = next(k for k in sp.knobs if k.kind == "bits")
    q4 = compress(m, sp, {**sp.default(), four.name: 4}, cal)
    w4 = next(numpy_helper.to_array(t) for t in q4.graph.initializer
              if t.name.endswith("_q") and t.data_type == 3
              and t.name.removesuffix("_q") == next(x.weight.name for x in weighted_layers(as_ir(m))
                                                    if x.name == four.target))
    assert np.abs(w4).max() <= 7  # 4-bit weights in the int8 container


def test_mixed_precision_candidate_compiles_with_float_schedules(tmp_path, demo, space, host, monkeypatch):
    """A candidate with some layers int8 and the rest float: the integer layers are
    lowered, the float ones go through pfcompile's code generation (not TVM's
    unscheduled defaults), and the result matches onnxruntime at the quantized tolerance."""
    import tvm
    from tvm import relax

    from pfcompile import codegen
    from pfcompile.compiler import compile_model

    m, val, cal = demo.model, demo.val.subset(VAL_N), demo.calib.subset(CALIB_N)
    layers = _layers(m)
    q = compress(m, space, {**space.default(), f"bits:{layers[3]}": 8, f"bits:{layers[7]}": 8}, cal)
    calls = []
    real = codegen.build
    monkeypatch.setattr(codegen, "build", lambda *a, **k: calls.append(1) or real(*a, **k))
    art = compile_model(q, host, tmp_path / "c")
    assert calls, "the float layers of a mixed model were not built by pfcompile.codegen"
    paths = [x["path"] for x in json.loads((tmp_path / "c" / "model.json").read_text())["layers"]]
    assert paths.count("int8") == 2 and paths.count("float") == 10
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(art.so_path)), tvm.cpu())
    x = val.inputs["input"][:4]
    got = np.concatenate([vm["main"](tvm.runtime.tensor(x[i:i + 1])).numpy() for i in range(len(x))])
    ref = _ort(q, x)
    assert np.abs(got - ref).max() <= QUANT_RANGE_FRACTION * np.abs(ref).max()


def test_quantize_pass_skip_leaves_layers_float(demo):
    from pfcompile.passes.quantize import QuantConfig, quantize

    m, cal = demo.model, demo.calib.subset(CALIB_N)
    layers = _layers(m)
    res = quantize(m, QuantConfig(skip=tuple(layers[1:])), cal)
    assert res.modified
    dq_w = [n for n in res.model.graph if n.op_type == "DequantizeLinear"
            and n.inputs[0].const_value is not None and n.inputs[0].name.endswith("_q")]
    assert len(dq_w) == 1  # only the first layer's weight
    with pytest.raises(ConfigError, match="both given bits and skipped"):
        QuantConfig(layers=((layers[0], 4),), skip=(layers[0],))
    with pytest.raises(ConfigError, match="unknown layer"):
        quantize(m, QuantConfig(skip=("/no/such/Conv",)), cal)
    with pytest.raises(PassError, match="nothing to quantize"):
        quantize(m, QuantConfig(skip=tuple(layers)), cal)
