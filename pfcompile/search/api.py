"""``pfcompile run`` as one function: resolve the model, data and device, run
the search, write ``DIST/`` (model.onnx, model.so, report.json, report.html)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from pfcompile import paths
from pfcompile.data import Dataset, load_npz
from pfcompile.errors import ConfigError, SearchError
from pfcompile.model import input_specs, load_onnx
from pfcompile.paths import demo_paths
from pfcompile.runner import PoolStatus
from pfcompile.search.device_spec import DeviceSpec
from pfcompile.search.loop import SearchSettings, run_search
from pfcompile.search.report import write_report
from pfcompile.targets import load_target

__all__ = ["default_cache_dir", "demo_paths", "run"]


def default_cache_dir() -> Path:
    """The cache folder (:func:`pfcompile.paths.cache_dir`)."""
    return paths.cache_dir()


def _random_data(model: onnx.ModelProto, n: int = 256) -> Dataset:
    specs = input_specs(model)
    rng = np.random.default_rng(0)
    inputs = {s.name: rng.standard_normal((n,) + tuple(s.shape[1:])).astype(s.dtype) for s in specs}
    return Dataset(inputs, None, "random")


def _pool_events(on_event: Callable[[str, dict], None] | None) -> Callable[[PoolStatus], None] | None:
    """A device pool's slot changes as ``devices`` events (size, busy, idle, text)."""
    if on_event is None:
        return None
    return lambda st: on_event("devices", {**st.to_json(), "text": st.text})


def run(model_path: str | Path | None = None, target: str = "host", *,
        data: str | Path | None = None, calib: str | Path | None = None,
        settings: SearchSettings | None = None, device: str | None = None,
        rpc: str | None = None, key: str | None = None, out_dir: str | Path = "dist",
        resume: str | Path | None = None, cache_dir: str | Path | None = None,
        null_device: bool = False, port_range: tuple[int, int] = (9300, 9350),
        threads: int | None = None, final_repeats: int = 3,
        finetune: bool = False, train: str | Path | None = None, finetune_epochs: int = 10,
        on_event: Callable[[str, dict], None] | None = None,
        accel_latency: str = "total") -> dict:
    """Search, then write DIST; returns the report dict.

    ``finetune``: fine-tune the best candidate (cross-entropy on labels when ``train``
    has them, plus distillation from the original model) on ``train`` (default: the
    calibration data, else ``data``) before the final compile; the report records
    top-1 before and after.

    Accelerator targets (``targets/fpga-*.toml``): candidates are quantized for the
    accelerator and measured on the simulator device (``--device``/``--rpc``, else one
    started here); ``accel_latency`` is what is optimized: ``total`` (simulated
    accelerator + measured host ops) or ``accel`` (simulated accelerator only); see
    :mod:`pfcompile.search.accel_device`.

    The device: :class:`~pfcompile.search.device_spec.DeviceSpec` of ``device`` / ``rpc``
    / ``key`` / ``null_device`` / ``port_range`` / ``threads`` (without ``device`` or
    ``rpc``, the target's own device is started here and stopped at the end)."""
    settings = settings or SearchSettings()
    if model_path is None:
        model_path, demo_val, demo_calib = demo_paths()
        data = data or demo_val
        calib = calib or demo_calib
    model = load_onnx(model_path)
    specs = input_specs(model)
    tgt = load_target(target)
    dataset = load_npz(data, specs) if data else _random_data(model)
    # LASSO pruning calibrates on --calib, else on the first samples of --data;
    # with neither (random inputs) candidates are pruned by L1 weight norm
    calib_set = load_npz(calib, specs) if calib else (dataset if data else None)
    if calib_set is not None:
        calib_set = calib_set.subset(min(settings.calib_samples, len(calib_set)))
    out = Path(out_dir)
    run_dir = Path(resume) if resume else out / "run"
    if resume and not (run_dir / "trials.jsonl").exists():
        raise SearchError(f"--resume {run_dir}: no trials.jsonl there to resume")
    if not resume and (run_dir / "trials.jsonl").exists():
        raise SearchError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it "
                          "or choose another -o")
    deploy = None
    if tgt.is_accelerator:
        # candidates are quantized for the accelerator (uniform 8-bit baseline, per-layer
        # widths from the config) and measured on the simulator device: see accel_device
        from pfcompile.search.accel_device import AccelDeployer

        if finetune:
            raise ConfigError(f"--finetune is not supported on accelerator targets "
                              f"('{tgt.name}') yet: run the search without it")
        deploy = AccelDeployer(tgt, calib_set if calib_set is not None else dataset,
                               settings.calib_samples)
    spec = DeviceSpec(device=device, rpc=rpc, key=key, null=null_device, port_range=port_range,
                      threads=threads, accel_latency=accel_latency)
    dev, server = spec.open(tgt, on_change=_pool_events(on_event))
    final = None
    ft_info = None
    try:
        result = run_search(model, tgt, dev, dataset, run_dir, settings,
                            cache_dir=cache_dir if cache_dir is not None else default_cache_dir(),
                            calib=calib_set, on_event=on_event, deploy=deploy)
        if finetune and result.best_model is not None:
            if on_event:
                on_event("finetune", {})
            ft_info = _finetune_best(result, model_path, train or calib or data, data, dev,
                                     run_dir / "finetune", finetune_epochs)
        if result.best_model is not None and not null_device and final_repeats > 0:
            if on_event:
                on_event("final", {})
            final = remeasure(dev, {"baseline": result.baseline_model or model,
                                    "best": result.best_model},
                              run_dir / "final", final_repeats)
    finally:
        dev.close()
        if server is not None:
            server.stop()
    out.mkdir(parents=True, exist_ok=True)
    # no candidate won: the original, as deployed (accelerators: its uniform 8-bit QDQ)
    best_model = result.best_model or result.baseline_model or model
    onnx.save(best_model, str(out / "model.onnx"))
    so = (result.best or result.baseline).get("so_path")
    # the compiled artifact: model.so (CPU targets) or program.npz (accelerator targets)
    lib = out / Path(so).name if so else None
    for stale in ("model.so", "program.npz"):
        if (out / stale).exists() and (lib is None or lib.name != stale):
            (out / stale).unlink()
    if so and Path(so).exists():
        # DIST is itself an artifact (`pfcompile measure DIST`): the library, its
        # model.json and the model it was compiled from
        shutil.copy(so, lib)
        for name in ("model.json", "source.onnx"):
            if (Path(so).parent / name).exists():
                shutil.copy(Path(so).parent / name, out / name)
    return write_report(result, out, final=final, finetune=ft_info)


def _finetune_best(result, teacher_path: str | Path, train_npz: str | Path | None,
                   val_npz: str | Path | None, dev, work: Path, epochs: int) -> dict:
    """Fine-tune ``result.best_model`` and, when the fine-tuned graph is at least as
    accurate and compiles and verifies on the device, make it the deployed best (same
    shapes, same latency); otherwise keep the candidate and say why."""
    from pfcompile.finetune import FinetuneSettings
    from pfcompile.finetune.run import run_finetune

    if train_npz is None:
        raise SearchError("--finetune needs training data: pass --train (or --calib / --data)")
    work.mkdir(parents=True, exist_ok=True)
    cand = work / "candidate.onnx"
    onnx.save(result.best_model, str(cand))
    res = run_finetune(cand, teacher_path, train_npz, val_npz, FinetuneSettings(epochs=epochs),
                       out_path=work / "finetuned.onnx")
    info = {"before_top1": res.get("before_top1"), "after_top1": res.get("after_top1"),
            "teacher_top1": res.get("teacher_top1"), "epochs": epochs,
            "train_data": str(train_npz), "deployed": False}
    before, after = res.get("before_top1"), res.get("after_top1")
    if before is not None and after is not None and after < before:
        info["error"] = "fine-tuning lowered top-1 on the validation data; kept the candidate"
        return info
    tuned = load_onnx(res["model_path"])
    m = dev.measure_model(tuned, work / "compiled")
    if m.ok:
        result.best_model = tuned
        result.best = {**result.best, "so_path": m.so_path, "finetuned": True}
        info["deployed"] = True
    else:
        info["error"] = m.error
    return info


def remeasure(dev, models: dict[str, onnx.ModelProto], work: Path, repeats: int) -> dict:
    """Measure ``models`` round-robin ``repeats`` times (drift on a shared machine hits
    all alike); medians in ms."""
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for name, m in models.items():
            r = dev.measure_model(m, work / name)
            if r.ok:  # the model's own median (paired timing keeps it as raw_ms)
                times[name].append(r.raw_ms if r.raw_ms is not None else r.latency_ms)
    med = {k: float(np.median(v)) if v else None for k, v in times.items()}
    out = {f"{k}_ms": v for k, v in med.items()}
    out["repeats"] = repeats
    if med.get("baseline") and med.get("best"):
        out["speedup"] = med["baseline"] / med["best"]
    return out
