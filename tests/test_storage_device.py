"""Compact weight storage on devices (slow): the packed libraries verified against the
exact reference on the emulated arm64 device, and a `pfcompile run --size-mb S` whose
deployed files measure at most S."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from pfcompile.artifact_size import artifact_size
from pfcompile.compiler import compile_model
from pfcompile.data import load_npz
from pfcompile.device import LocalRPC, default_device_dir
from pfcompile.measure import measure
from pfcompile.model import input_specs, load_onnx
from pfcompile.passes.qlayers import as_proto
from pfcompile.passes.quantize import QuantConfig, quantize
from pfcompile.passes.sparsify import SparsifyConfig, sparsify
from pfcompile.targets import MeasureSettings, load_target

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not (default_device_dir() / ".stamp").exists() or shutil.which("qemu-aarch64") is None
                    or shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="no emulated arm64 device (run tools/setup_arm64_device.sh)")
def test_packed_libraries_verify_on_emulated_arm64(trained, digits, tmp_path):
    """4-bit, 4-bit codebook and 75 %-sparse PlainCNN, cross-compiled: stored packed,
    decoded at load on the device, outputs verified against the exact reference."""
    m = load_onnx(trained("PlainCNN").onnx)
    cal = load_npz(digits.calib_npz, input_specs(m))
    models = {"q4": as_proto(quantize(m, QuantConfig(bits=4), cal).model),
              "cb4": as_proto(quantize(m, QuantConfig(bits=4, codebook=True), cal).model),
              "sp75": as_proto(sparsify(m, SparsifyConfig(sparsity=0.75)).model)}
    target = load_target("arm64")
    arts = {}
    for name, model in models.items():
        art = compile_model(model, target, tmp_path / name)
        assert art.meta["storage"]["lifted"], name
        arts[name] = art
    with LocalRPC(target=target, key="arm64", device_dir=default_device_dir()) as lrpc:
        for name, art in arts.items():
            res = measure(art.dir, target, rpc=lrpc.tracker_addr, key="arm64",
                          settings=MeasureSettings(number=1, repeat=1, min_repeat_ms=0,
                                                   timeout_s=300))
            assert res["verified"] is True, (name, res["detail"])
            assert res["emulated"] is True


def test_run_size_goal_best_candidate_measures_within_it(tmp_path):
    """`pfcompile run --size-mb S --bits auto` on the demo, measured on this machine: S is
    below the original's deployed size, and DIST's files (the best candidate) measure <= S."""
    from pfcompile.paths import demo_paths
    from pfcompile.search import DeviceSpec, RunConfig, SearchSettings, run

    model_p, _, _ = demo_paths()
    original = artifact_size(compile_model(model_p, "host", tmp_path / "original").dir)
    s_mb = round(0.75 * original.size_mb, 3)
    settings = SearchSettings(strategy="hw", budget=3, bits="auto", max_acc_drop=10.0,
                              size_mb=s_mb, eval_subset=64, seed=0)
    rep = run(RunConfig(settings=settings, out_dir=tmp_path / "dist", cache_dir=tmp_path / "c",
                        device=DeviceSpec(port_range=(9550, 9599)), final_repeats=0))
    assert rep["best"] is not None, json.dumps(rep)[:2000]
    dist = artifact_size(tmp_path / "dist")
    assert dist.size_bytes / 1e6 <= s_mb < original.size_mb
    assert rep["deployed"] == dist.to_json()
    assert rep["best"]["size_measured"] and rep["best"]["size_bytes"] == dist.size_bytes
    assert rep["baseline"]["size_bytes"] == pytest.approx(original.size_bytes, rel=0.01)
    trials = [json.loads(x) for x in (tmp_path / "dist" / "run" / "trials.jsonl").read_text().splitlines()]
    for t in trials:
        if t.get("type") == "trial" and t.get("status") == "ok":
            assert t["size_measured"] and t["feasible"] == (t["size_mb"] <= s_mb and
                                                              t["acc_drop"] <= 10.0)
    # report.html's headline: the deployed size beside latency and accuracy
    assert f"{dist.size_bytes / 1e6:.3f} MB" in (tmp_path / "dist" / "report.html").read_text()
    assert onnx.load(str(tmp_path / "dist" / "model.onnx")) is not None
