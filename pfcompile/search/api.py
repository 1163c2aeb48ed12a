"""``pfcompile run`` as one function: resolve the model, data and device, run
the search, write ``DIST/`` (model.onnx, model.so, report.json, report.html)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from pfcompile import paths
from pfcompile.data import Dataset, load_npz
from pfcompile.deploy import deployment_threads
from pfcompile.errors import ConfigError, DeviceError, SearchError
from pfcompile.frontend import import_model
from pfcompile.model import input_specs
from pfcompile.runner import PoolStatus
from pfcompile.search.confirm import split_for_confirmation
from pfcompile.search.finalist import finetune_finalist
from pfcompile.search.loop import TrialLog, run_search
from pfcompile.search.ort_compare import OrtTimer
from pfcompile.search.report import write_report
from pfcompile.search.run_config import RunConfig
from pfcompile.targets import load_target

__all__ = ["RunConfig", "default_cache_dir", "remeasure", "run"]


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


def run(config: RunConfig, on_event: Callable[[str, dict], None] | None = None) -> dict:
    """Search, then write DIST (``config.out_dir``); returns the report dict.

    ``on_event(kind, info)`` is told the run's progress (trials, device pool slots,
    confirmation, fine-tuning, the final re-measurement): the CLI's live table.

    Without ``config.model``: the built-in demo, with its validation and calibration data
    (:meth:`RunConfig.with_demo`).

    ``data`` is split once (``settings.confirm_fraction``, seeded by ``settings.seed``,
    stratified by label) into a search part, on which every candidate is scored, and a
    confirmation part, on which only the finalists are re-scored; only a candidate whose
    drop qualifies there is deployed (:mod:`pfcompile.search.confirm`).

    ``finetune`` (default: on when ``train`` is given): the search steers towards
    candidates whose drop before fine-tuning is within ``finetune_drop``; after it, up to
    ``finetune_candidates`` of those that beat the best qualifying one are fine-tuned and
    judged again, then the finalist (:mod:`pfcompile.search.finalist`). Fine-tune
    (cross-entropy on labels when the training data has them, plus distillation from
    the original model) on ``train`` (default: the calibration data, else the search
    part of ``data``), check that it learned, re-confirm it, and deploy it only then
    (:mod:`pfcompile.search.finalist`); the report records what happened.

    Host targets with the device started here: the original model is also timed in
    onnxruntime (own process, same thread count), alternating with the final
    re-measurement: ``onnxruntime`` and ``speedup_vs_onnxruntime`` in the report.

    ``input_shapes`` binds dynamic input dims (``--input-shape``).

    Accelerator targets (``targets/fpga-*.toml``): candidates are quantized for the
    accelerator and measured on the simulator device (``--device``/``--rpc``, else one
    started here); ``device.accel_latency`` is what is optimized: ``total`` (simulated
    accelerator + measured host ops) or ``accel`` (simulated accelerator only); see
    :mod:`pfcompile.search.accel_device`.

    The device: ``config.device``, a :class:`~pfcompile.search.device_spec.DeviceSpec`
    (without ``device`` or ``rpc``, the target's own device is started here and stopped
    at the end)."""
    c = config.with_demo()
    settings, spec = c.settings, c.device
    # the import front end: dynamic dims bound (--input-shape; a free batch -> 1),
    # Constant weights lifted, shape sub-graphs folded (pfcompile.frontend)
    model = import_model(c.model, c.input_shapes)
    specs = input_specs(model)
    tgt = load_target(c.target)
    dataset = load_npz(c.data, specs) if c.data else _random_data(model)
    # one seeded split: candidates are scored on the search part, finalists confirmed on the rest
    dataset, confirm_set = split_for_confirmation(dataset, settings.confirm_fraction, settings.seed)
    # LASSO pruning calibrates on --calib, else on the first samples of the search part of
    # --data; with neither (random inputs) candidates are pruned by L1 weight norm
    calib_set = load_npz(c.calib, specs) if c.calib else (dataset if c.data else None)
    if calib_set is not None:
        calib_set = calib_set.subset(min(settings.calib_samples, len(calib_set)))
    out = c.out_dir
    run_dir = c.run_dir
    if c.resume and not (run_dir / "trials.jsonl").exists():
        raise SearchError(f"--resume {run_dir}: no trials.jsonl there to resume")
    if not c.resume and (run_dir / "trials.jsonl").exists():
        raise SearchError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it "
                          "or choose another -o")
    deploy = None
    do_finetune = c.do_finetune
    if tgt.is_accelerator:
        # candidates are quantized for the accelerator (uniform 8-bit baseline, per-layer
        # widths from the config) and measured on the simulator device: see accel_device
        from pfcompile.search.accel_device import AccelDeployer

        if c.finetune:
            raise ConfigError(f"--finetune is not supported on accelerator targets "
                              f"('{tgt.name}') yet: run the search without it")
        do_finetune = False
        deploy = AccelDeployer(tgt, calib_set if calib_set is not None else dataset,
                               settings.calib_samples)
    if do_finetune and c.finetune_candidates > 0 and c.finetune_drop > settings.max_acc_drop:
        # fine-tuning to come: steer the search towards drops it may win back
        settings = replace(settings, recover_drop=c.finetune_drop)
    dev, server = spec.open(tgt, on_change=_pool_events(on_event))
    final = None
    ft_info = None
    ort_info = None
    cache = c.cache_dir if c.cache_dir is not None else default_cache_dir()
    try:
        result = run_search(model, tgt, dev, dataset, run_dir, settings, cache_dir=cache,
                            calib=calib_set, on_event=on_event, deploy=deploy, confirm=confirm_set)
        if do_finetune and (result.best is not None or result.finalists or result.recoverable):
            # (finetune_finalist tells on_event of each candidate it trains)
            train_set, train_name = _training_data(c, dataset, specs)
            ft_info = finetune_finalist(result, model, train_set, train_name, dataset, dev,
                                        run_dir / "finetune", c.finetune_epochs,
                                        log=TrialLog(run_dir / "trials.jsonl"), emit=on_event,
                                        candidates=c.finetune_candidates)
        # the user's alternative: the original in onnxruntime on this machine (host device
        # started here), timed in its own process between the re-measurement rounds
        timer = None
        if not (tgt.is_host and server is not None and not spec.null and c.final_repeats > 0):
            ort_info = {"ms": None, "note": "not measured: " + (
                "the null device measures nothing" if spec.null else
                "no final re-measurement (final_repeats 0)" if c.final_repeats <= 0 else
                "onnxruntime is timed on this machine, and the device is not a host device "
                "started here")}
        else:
            # the same thread count as the compiled models' runs
            ort_info = {"threads": spec.threads or deployment_threads(tgt)}
            try:
                timer = OrtTimer(model, ort_info["threads"], run_dir / "final" / "onnxruntime")
                ort_info["version"] = timer.version
            except DeviceError as exc:
                ort_info["error"] = str(exc)
        if (result.best_model is not None or timer is not None) and not spec.null \
                and c.final_repeats > 0:
            if on_event:
                on_event("final", {})
            models = {"baseline": result.baseline_model or model}
            if result.best_model is not None:
                models["best"] = result.best_model
            try:
                final = remeasure(dev, models, run_dir / "final", c.final_repeats,
                                  others={"onnxruntime": timer.measure} if timer else None)
            finally:
                if timer is not None:
                    timer.close()
            if timer is not None:
                ort_info.update(_ort_summary(final, timer))
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
        _record_measurement(out / "model.json", final, ort_info, getattr(dev, "name", None))
    return write_report(result, out, final=final, finetune=ft_info, onnxruntime=ort_info)


def _record_measurement(meta_path: Path, final: dict | None, ort_info: dict | None,
                        device: str | None) -> None:
    """DIST/model.json says what its latency was measured with: the final re-measurement's
    device, thread count and medians (and onnxruntime's, same threads)."""
    if not final or not meta_path.exists():
        return
    meta = json.loads(meta_path.read_text())
    deployed = "best" if final.get("best_ms") else "baseline"
    meta["measured"] = {
        "device": device, "threads": final.get("threads"), "repeats": final.get("repeats"),
        "median_ms": final.get(f"{deployed}_ms"),
        "original_median_ms": final.get("baseline_ms"),
        "onnxruntime_ms": (ort_info or {}).get("ms"),
        "onnxruntime_threads": (ort_info or {}).get("threads"),
        "how": "pfcompile run's final re-measurement: rounds alternating the deployed model, "
               "the original and onnxruntime, medians",
    }
    meta_path.write_text(json.dumps(meta, indent=2))


def _training_data(c: RunConfig, search_part: Dataset, specs) -> tuple[Dataset, str]:
    """Fine-tuning data: ``--train``, else ``--calib``, else the search part of ``--data``
    (never its confirmation part, which must stay unseen)."""
    if c.train is not None:
        return load_npz(c.train, specs), str(c.train)
    if c.calib is not None:
        return load_npz(c.calib, specs), str(c.calib)
    return search_part, f"{c.data or 'random inputs'} (search part)"


def _ort_summary(final: dict, timer: OrtTimer) -> dict:
    ms = final.get("onnxruntime_ms")
    ours = final.get("best_ms") or final.get("baseline_ms")
    return {"ms": ms, "repeats": final.get("repeats"), "calls_per_round": timer.calls,
            "deployed_ms": ours, "deployed": "best" if final.get("best_ms") else "baseline",
            "speedup": ms / ours if ms and ours else None,
            "how": "the original model, onnxruntime default session (all graph optimizations), "
                   "intra-op threads = the device's TVM threads, inter-op 1, in its own process, "
                   "alternating with the compiled models' re-measurement rounds (medians)"}


def remeasure(dev, models: dict[str, onnx.ModelProto], work: Path, repeats: int,
              others: dict[str, Callable[[], float]] | None = None) -> dict:
    """Measure ``models`` round-robin ``repeats`` times (drift on a shared machine hits
    all alike); medians in ms. ``others``: more timings taken in the same rounds, after
    the models (e.g. the original in onnxruntime, :class:`OrtTimer`), as ``<name>_ms``."""
    others = others or {}
    times: dict[str, list[float]] = {k: [] for k in (*models, *others)}
    threads: set[int] = set()
    for _ in range(repeats):
        for name, m in models.items():
            r = dev.measure_model(m, work / name)
            if r.ok:  # the model's own median (paired timing keeps it as raw_ms)
                times[name].append(r.raw_ms if r.raw_ms is not None else r.latency_ms)
                if r.details.get("threads"):
                    threads.add(int(r.details["threads"]))
        for name, fn in others.items():
            try:
                times[name].append(float(fn()))
            except DeviceError:
                pass
    med = {k: float(np.median(v)) if v else None for k, v in times.items()}
    out = {f"{k}_ms": v for k, v in med.items()}
    out["repeats"] = repeats
    if threads:   # the device's thread pool in these runs
        out["threads"] = threads.pop() if len(threads) == 1 else sorted(threads)
    if med.get("baseline") and med.get("best"):
        out["speedup"] = med["baseline"] / med["best"]
    return out
