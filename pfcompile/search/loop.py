"""The search loop: propose -> compress -> compile + measure on the device ->
evaluate -> log -> retrain -> repeat, until ``budget`` device measurements.

Every baseline, trial and kernel measurement is appended to
``RUN_DIR/trials.jsonl`` (flushed and fsynced) the moment it exists; a rerun
with the same RUN_DIR (``--resume``) replays the log and continues, so a kill
loses at most the trial in flight (with a device that has ``measure_many``, a
:class:`~pfcompile.search.pool.DevicePool`, the trials of a round are measured
together, each logged as it arrives: a kill loses at most those in flight).
Compiled libraries live under ``RUN_DIR/artifacts/<model hash>/`` and are reused.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx

from pfcompile.data import Dataset
from pfcompile.errors import PfcompileError, SearchError
from pfcompile.model import model_hash
from pfcompile.search.confirm import check_split, confirm_finalists, select_finalists
from pfcompile.search.evaluation import Evaluator
from pfcompile.search.graph import Kernel, extract_kernels
from pfcompile.search.judge import AccuracyJudge, strategy_view
from pfcompile.search.knobs import parse_bits, parse_sparsity
from pfcompile.search.latency_model import FlopsModel, LatencyModel
from pfcompile.search.space import SearchSpace, build_space, compress, config_hash
from pfcompile.search.state import load_strategy_state, save_strategy_state
from pfcompile.search.stats import check_confidence
from pfcompile.search.strategies import STRATEGIES, Goal, make_strategy

__all__ = ["Deployer", "SearchResult", "SearchSettings", "TrialLog", "model_size_mb", "run_search"]


@dataclass(frozen=True)
class SearchSettings:
    strategy: str = "hw"
    budget: int = 12                 # candidate measurements on the device
    batch: int = 3                   # candidates proposed per round
    max_acc_drop: float = 0.5        # accuracy points
    speedup: float | None = None
    latency_ms: float | None = None
    size_mb: float | None = None
    seed: int = 0
    pool: int = 24                   # candidates ranked per round (hw / flops)
    eval_subset: int = 200           # samples for the cheap accuracy estimate
    min_keep: float = 0.25
    kernels_per_trial: int = 8       # new kernels timed after each candidate (hw)
    calib_samples: int = 32          # LASSO pruning: calibration samples (time grows fast)
    # per-layer knobs (off by default): "auto" (the target's / the sparsify pass's
    # choices) or comma-separated values, see pfcompile.search.knobs
    bits: str | tuple[int, ...] | None = None          # e.g. "8,32", (8, 32) or "auto"
    sparsity: str | tuple[float, ...] | None = None    # e.g. "0,0.5,0.75" or "auto"
    # accuracy under noise (pfcompile.search.stats / judge / confirm): a candidate qualifies
    # when the upper `confidence` bound of its drop is within max_acc_drop (0: the estimate)
    confidence: float = 0.9
    confirm_fraction: float = 0.3    # of --data, split off for confirming finalists (0: none)
    finalists: int = 3               # top candidates re-scored on the confirmation part

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise SearchError(f"unknown strategy '{self.strategy}'; choose one of {', '.join(STRATEGIES)}")
        if self.budget < 1:
            raise SearchError(f"--budget must be at least 1, got {self.budget}")
        if self.max_acc_drop < 0:
            raise SearchError(f"--max-acc-drop must be >= 0, got {self.max_acc_drop}")
        if sum(x is not None for x in (self.speedup, self.latency_ms, self.size_mb)) > 1:
            raise SearchError("give at most one of --speedup, --latency-ms, --size-mb")
        if self.calib_samples < 1:
            raise SearchError(f"calib_samples must be >= 1, got {self.calib_samples}")
        parse_sparsity(self.sparsity)  # syntax now; bit widths are checked against the target
        check_confidence(self.confidence)
        if not 0 <= self.confirm_fraction < 1:
            raise SearchError(f"--confirm-fraction must be in [0, 1), got {self.confirm_fraction}")
        if self.finalists < 1:
            raise SearchError(f"--finalists must be at least 1, got {self.finalists}")


class Deployer(Protocol):
    """How a config becomes the model the device runs, for targets that need more than the
    compression passes (FPGA-style accelerators: quantize to their integer form,
    ``pfcompile.search.accel_device.AccelDeployer``). Without one, a candidate is
    ``compress(model, space, config, calib)`` and its kernels are ``extract_kernels``."""

    def candidate(self, model: onnx.ModelProto, space: SearchSpace, config: dict,
                  calib: Dataset | None, calib_samples: int) -> onnx.ModelProto: ...

    def kernels(self, model: onnx.ModelProto, space: SearchSpace, config: dict) -> list[Kernel]: ...

    def adapt_space(self, space: SearchSpace) -> SearchSpace: ...


def model_size_mb(model: onnx.ModelProto) -> float:
    """What the model stores for its constants, in MB (1e6 bytes): each initializer
    and ``Constant`` value at its element size, as stored in the ONNX model — float32
    weights 4 bytes each, the quantize pass's int8 weights 1 byte each (plus their
    float32 per-channel scales and zero points; weights narrower than 8 bits still
    take a whole int8 byte, nothing is bit-packed). Zeros from the sparsify pass are
    counted like any other value: the initializers are dense and no compiled
    artifact here (TVM's CPU kernels, the accelerator simulator) stores or skips
    them sparsely, so a sparse layer is as big as a dense one
    (``pfcompile.passes.sparsify.sparsity_report`` says what CSR / BSR storage would
    take). Names and protobuf framing are not counted."""
    total = 0
    tensors = list(model.graph.initializer) + [
        a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    for t in tensors:
        numel = int(np.prod(t.dims)) if len(t.dims) else 1
        try:
            item = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            total += t.ByteSize()
            continue
        total += numel * item
    return total / 1e6


class TrialLog:
    """Append-only JSON lines; each record is on disk before the call returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True, default=float)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill: that trial was in flight
        return out


@dataclass
class SearchResult:
    run_dir: Path
    baseline: dict
    best: dict | None
    trials: list[dict]
    device_measurements: int
    kernel_measurements: int
    space: SearchSpace
    goal: Goal
    emulated: bool
    strategy: str
    best_model: onnx.ModelProto | None = field(default=None, repr=False)
    simulated: bool = False          # latencies from a simulator's cycle model (FPGA targets)
    baseline_model: onnx.ModelProto | None = field(default=None, repr=False)  # None: the original
    # the confirmation split (pfcompile.search.confirm): finalists re-scored on the
    # confirmation part (None: no split); ``best`` is then the first confirmed finalist
    confirmation: list[dict] | None = None
    finalists: list[dict] = field(default_factory=list)   # feasible trials, best first
    confirm_judge: AccuracyJudge | None = field(default=None, repr=False)
    judge: AccuracyJudge | None = field(default=None, repr=False)        # the search part's
    finalist_model: onnx.ModelProto | None = field(default=None, repr=False)  # finalists[0]'s


def _acc_drop(base: float, score: float) -> float:
    return 100.0 * (base - score)


def run_search(model: onnx.ModelProto, target, device, data: Dataset, run_dir: str | Path,
               settings: SearchSettings = SearchSettings(), *, cache_dir: str | Path | None = None,
               calib: Dataset | None = None,
               on_event: Callable[[str, dict], None] | None = None,
               deploy: Deployer | None = None, confirm: Dataset | None = None) -> SearchResult:
    """Search ``model``'s compression space on ``device``; see the module docstring.

    Candidates are pruned with LASSO + reconstruction on ``calib`` when given
    (else L1); latency predictions use the L1 prune of the same config (only the
    shapes matter there, and it is ~30x cheaper). ``deploy``: see :class:`Deployer`
    (the baseline is then ``deploy.candidate`` of the default config). ``confirm``: the
    confirmation part of the data (:mod:`pfcompile.search.confirm`); the best is then the
    first finalist whose drop qualifies on it, else None."""
    run_dir = Path(run_dir)
    log = TrialLog(run_dir / "trials.jsonl")
    emit = on_event or (lambda kind, info: None)
    past = log.read()
    meta = next((r for r in past if r.get("type") == "meta"), None)
    mhash = model_hash(model)
    if meta is not None and (meta["model_hash"] != mhash or meta["strategy"] != settings.strategy
                             or meta["target"] != target.name):
        raise SearchError(f"{run_dir} holds a run of model {meta['model_hash']} / strategy "
                          f"{meta['strategy']} / target {meta['target']}; resume it with the same "
                          "model, --strategy and --target, or use a new run folder")
    if meta is not None:
        old = meta.get("settings", {})
        for key in ("bits", "sparsity", "confidence"):
            if key == "confidence" and key not in old:   # a run from before intervals
                continue
            was, now = old.get(key), getattr(settings, key)
            if (list(was) if isinstance(was, (list, tuple)) else was) != \
                    (list(now) if isinstance(now, (list, tuple)) else now):
                raise SearchError(f"{run_dir} holds a run with --{key} {old.get(key)}; resume it "
                                  f"with the same --{key}, or use a new run folder")
    split_rec = check_split(past, data, confirm, run_dir)
    if meta is None:
        log.append({"type": "meta", "model_hash": mhash, "strategy": settings.strategy,
                    "target": target.name, "settings": asdict(settings), "time": time.time()})
    if split_rec is not None:
        log.append(split_rec)

    space = build_space(model, target.hardware, min_keep=settings.min_keep,
                        bits=parse_bits(settings.bits, target),
                        sparsity=parse_sparsity(settings.sparsity))
    if deploy is not None:
        space = deploy.adapt_space(space)      # e.g. only the widths an accelerator runs
    # bits knobs calibrate activation ranges on the calibration data, else on --data
    qcalib = calib if calib is not None else data.subset(min(settings.calib_samples, len(data)))
    evaluator = Evaluator(model, data)
    judge = AccuracyJudge(evaluator, settings.max_acc_drop, settings.confidence,
                          "search" if confirm is not None else "validation")
    cjudge = None if confirm is None else AccuracyJudge(
        Evaluator(model, confirm), settings.max_acc_drop, settings.confidence, "confirmation")
    for j in (judge, cjudge):       # data too small for the budget: say so before searching
        if j is not None and j.too_small():
            emit("warning", {"text": j.too_small()})
    sub = data.subset(min(settings.eval_subset, len(data)))
    cheap = Evaluator(model, sub)
    base_kernels = deploy.kernels(model, space, space.default()) if deploy else extract_kernels(model)

    # latency model: kernel-level (warm from the cache) or FLOPs
    lanes = int(target.hardware.get("fp32_lanes", 8))
    lm_path = LatencyModel.path_for(cache_dir, target.name) if cache_dir else None
    if settings.strategy == "flops":
        lat_model: LatencyModel | FlopsModel | None = FlopsModel()
    elif settings.strategy in ("hw", "rl", "bo"):
        lat_model = LatencyModel.load(lm_path, target.name, lanes) if lm_path else LatencyModel(target.name, lanes)
    else:
        lat_model = None
    n_kernel = 0
    for r in past:
        if r.get("type") == "kernels" and isinstance(lat_model, LatencyModel):
            ks = [Kernel.from_json(x["kernel"]) for x in r["items"]]
            lat_model.update_kernels(ks, [x["ms"] for x in r["items"]])
            n_kernel += len(ks)

    def time_kernels(kernels: list[Kernel], limit: int | None) -> None:
        nonlocal n_kernel
        if not isinstance(lat_model, LatencyModel):
            return
        todo, keys = [], set()
        for k in kernels:
            if not lat_model.known(k) and k.key not in keys:
                todo.append(k)
                keys.add(k.key)
        if limit is not None and len(todo) > limit:
            idx = np.random.default_rng(len(lat_model.kernels)).choice(len(todo), limit, replace=False)
            todo = [todo[int(i)] for i in sorted(idx)]
        if not todo:
            return
        emit("kernels", {"n": len(todo)})
        if hasattr(device, "kernel_reference_ms") and lat_model.reference_ms is not None:
            device.kernel_reference_ms = lat_model.reference_ms  # one scale across runs
        times = device.measure_kernels(todo)
        lat_model.reference_ms = getattr(device, "kernel_reference_ms", None) or lat_model.reference_ms
        items = [{"key": k.key, "kernel": k.to_json(), "ms": t} for k, t in zip(todo, times)
                 if t is not None]
        lat_model.update_kernels(todo, times)
        n_kernel += len(items)
        log.append({"type": "kernels", "items": items, "time": time.time()})
        if lm_path:
            lat_model.save(lm_path)

    compressed: dict[str, tuple[onnx.ModelProto, list[Kernel]]] = {}
    shapes_only: dict[str, tuple[list[Kernel], float | None]] = {}

    def candidate(cfg: dict) -> tuple[onnx.ModelProto, list[Kernel]]:
        """The candidate model (LASSO-pruned when there is calibration data) and its kernels."""
        h = config_hash(cfg)
        if h not in compressed:
            if len(compressed) > 256:
                compressed.clear()
            if deploy is not None:
                cm = deploy.candidate(model, space, cfg, calib, settings.calib_samples)
                compressed[h] = (cm, deploy.kernels(model, space, cfg))
            else:
                cm = compress(model, space, cfg, calib, calib_samples=settings.calib_samples,
                              quant_calib=qcalib)
                compressed[h] = (cm, extract_kernels(cm))
        return compressed[h]

    def shaped_model(cfg: dict) -> tuple[list[Kernel], float]:
        """The candidate's kernels and stored size from the cheap L1 prune (same shapes
        and dtypes as ``candidate``)."""
        h = config_hash(cfg)
        if h in compressed:
            return compressed[h][1], model_size_mb(compressed[h][0])
        if h not in shapes_only:
            if len(shapes_only) > 1024:
                shapes_only.clear()
            if deploy is not None:   # sizes of deployed candidates: see size_of
                shapes_only[h] = (deploy.kernels(model, space, cfg), None)
            else:
                cm = compress(model, space, cfg, quant_calib=qcalib)
                shapes_only[h] = (extract_kernels(cm), model_size_mb(cm))
        return shapes_only[h]

    def shaped(cfg: dict) -> list[Kernel]:
        return shaped_model(cfg)[0]

    def size_of(cfg: dict) -> float:
        try:
            size = shaped_model(cfg)[1]
            return size if size is not None else model_size_mb(candidate(cfg)[0])
        except PfcompileError:
            return math.inf

    # ---- baseline (not counted in the budget)
    base = next((r for r in past if r.get("type") == "baseline"), None)
    base_model = candidate(space.default())[0] if deploy is not None else model
    if base is None:
        emit("baseline", {})
        time_kernels(base_kernels, None)
        bhash = model_hash(base_model)
        measure_base = getattr(device, "set_reference", device.measure_model)
        m = measure_base(base_model, run_dir / "artifacts" / bhash)
        if not m.ok:
            raise SearchError(f"the unmodified model failed on device {device.name}: {m.error}")
        acc = evaluator.reference
        base = {"type": "baseline", "latency_ms": m.latency_ms, "top1": acc.top1,
                "agreement": acc.agreement, "score": acc.score, "macs": sum(k.macs for k in base_kernels),
                "size_mb": model_size_mb(model), "model_hash": mhash, "so_path": m.so_path,
                "n_eval": acc.n, "time": time.time(), **getattr(m, "details", {})}
        if deploy is not None:   # the deployed baseline (e.g. uniform 8-bit) is not the original
            dacc = evaluator.score(base_model)
            base.update({"deployed_model_hash": bhash, "deployed_top1": dacc.top1,
                         "deployed_score": dacc.score})
        log.append(base)
        if isinstance(lat_model, LatencyModel):  # seed with pruned shapes: one uniform candidate
            seeds = [space.uniform(0.5)]
            if "bits" in space.kinds():  # ... and its integer kernels at the narrowest width
                seeds.append({**seeds[0], **{k.name: k.choices[-1] for k in space.knobs
                                             if k.kind == "bits"}})
            for cfg in seeds:
                try:
                    time_kernels(shaped(cfg), None)
                except PfcompileError:
                    pass
    elif hasattr(device, "set_reference"):  # resumed: pair with the logged baseline's scale
        device.set_reference(base_model, run_dir / "artifacts" / model_hash(base_model),
                             given=base["latency_ms"])
    if lat_model is not None:
        lat_model.update_model(base_kernels, base["latency_ms"])
    emit("baseline_done", base)
    goal = Goal(settings.max_acc_drop,
                settings.latency_ms if settings.speedup is None else base["latency_ms"] / settings.speedup,
                settings.size_mb)

    def latency_of(cfg: dict) -> float:
        try:
            return lat_model.predict(shaped(cfg))
        except PfcompileError:
            return math.inf

    def drop_of(cfg: dict) -> float:
        try:
            return _acc_drop(cheap.reference.score, cheap.score(candidate(cfg)[0]).score)
        except PfcompileError:
            return math.inf

    strat = make_strategy(settings.strategy, space, goal, settings.seed, settings.budget,
                          latency_of, drop_of, settings.pool, settings.min_keep,
                          latency_model=lat_model, kernels_of=lambda cfg: candidate(cfg)[1],
                          size_of=size_of if settings.size_mb is not None else None)
    strat.seen.add(config_hash(space.default()))  # the baseline is measured already
    saved_state = load_strategy_state(run_dir)
    if saved_state is not None:
        strat.load_state_dict(saved_state)
    trials = [r for r in past if r.get("type") == "trial"]
    for r in trials:
        strat.tell(r["config"], strategy_view(r))
        if lat_model is not None and r["status"] == "ok":
            lat_model.update_model(shaped(r["config"]), r["latency_ms"])
    if trials:
        emit("resumed", {"trials": len(trials)})

    def record(c, rec: dict, time_now: bool) -> None:
        """Log a finished trial (its id: its place in the log), tell the strategy,
        update the latency model; time its new kernels now or leave that to the caller."""
        rec["id"] = len(trials)
        log.append(rec)
        trials.append(rec)
        strat.tell(c.config, strategy_view(rec))
        state = strat.state_dict()
        if state is not None:
            save_strategy_state(run_dir, state)
        if rec["status"] == "ok":
            kernels = candidate(c.config)[1]
            if lat_model is not None:
                lat_model.update_model(kernels, rec["latency_ms"])
            if time_now:
                time_kernels(kernels, settings.kernels_per_trial)
        emit("trial", rec)

    def measure_round(props: list) -> None:
        """Compress and evaluate ``props`` here, measure them together on the pool;
        each trial is logged as its measurement arrives, kernels timed after."""
        ready = []
        for c in props:
            rec, cm, t0 = _prepare_trial(len(trials), c, model, space, judge, base,
                                         lat_model, settings.strategy, candidate)
            if cm is None:
                record(c, rec, time_now=False)
            else:
                ready.append((c, rec, cm, t0))
        if not ready:
            return
        emit("measuring", {"n": len(ready)})

        def arrived(i: int, m) -> None:
            c, rec, _, t0 = ready[i]
            record(c, _finish_trial(rec, m, base, goal, t0), time_now=False)

        device.measure_many([(cm, run_dir / "artifacts" / rec["model_hash"])
                             for _, rec, cm, _ in ready], on_result=arrived)
        for c, rec, _, _ in ready:
            if rec["status"] == "ok":
                time_kernels(candidate(c.config)[1], settings.kernels_per_trial)

    stall = 0
    while len(trials) < settings.budget:
        props = strat.propose(min(settings.batch, settings.budget - len(trials)))
        if not props:
            stall += 1
            if stall > 3:
                emit("exhausted", {"trials": len(trials)})
                break
            continue
        if callable(getattr(device, "measure_many", None)):  # a device pool
            measure_round(props[:settings.budget - len(trials)])
            continue
        for c in props:
            if len(trials) >= settings.budget:
                break
            rec = _run_trial(len(trials), c, model, space, device, judge, base, goal,
                             run_dir, lat_model, settings.strategy, candidate)
            record(c, rec, time_now=True)

    # feasible (qualified accuracy, goal met; faster than the original when fastest), best first
    ranked = select_finalists(trials, base, goal)
    best = ranked[0] if ranked else None
    confirmation = None
    if cjudge is not None:
        best, confirmation = confirm_finalists(ranked[:settings.finalists],
                                               lambda cfg: candidate(cfg)[0], cjudge, log, past, emit)
    best_model = candidate(best["config"])[0] if best else None
    top_model = best_model if best is not None or not ranked else candidate(ranked[0]["config"])[0]
    n_dev = sum(1 for t in trials if t.get("measured"))
    return SearchResult(run_dir, base, best, trials, n_dev, n_kernel, space, goal,
                        bool(getattr(device, "emulated", False)), settings.strategy, best_model,
                        bool(getattr(device, "simulated", False)),
                        base_model if deploy is not None else None,
                        confirmation, ranked[:settings.finalists], cjudge, judge, top_model)


def _run_trial(i: int, c, model, space, device, judge, base, goal, run_dir, lat_model,
               strategy, candidate) -> dict:
    rec, cm, t0 = _prepare_trial(i, c, model, space, judge, base, lat_model, strategy, candidate)
    if cm is None:
        return rec
    m = device.measure_model(cm, run_dir / "artifacts" / rec["model_hash"])
    return _finish_trial(rec, m, base, goal, t0)


def _prepare_trial(i: int, c, model, space, judge: AccuracyJudge, base, lat_model, strategy,
                   candidate) -> tuple[dict, onnx.ModelProto | None, float]:
    """Compress and evaluate (the drop with its interval and verdict, ``judge``):
    ``(record, compressed model or None when that failed, t0)``."""
    t0 = time.time()
    rec: dict = {"type": "trial", "id": i, "strategy": strategy, "config": c.config,
                 "config_hash": config_hash(c.config), "status": "failed", "error": None,
                 "latency_ms": None, "pred_ms": c.pred_ms, "pred_drop": c.pred_drop,
                 "measured": False, "feasible": False}
    try:
        cm, kernels = candidate(c.config)
    except PfcompileError as exc:
        rec["error"] = f"compress failed: {exc}"
        return rec, None, t0
    h = model_hash(cm)
    rec.update({"model_hash": h, "macs": sum(k.macs for k in kernels), "size_mb": model_size_mb(cm),
                "keep": space.keep_ratios(c.config)})
    for kind in ("bits", "sparsity"):  # the layers moved off their default, when searched
        if kind in space.kinds():
            rec[kind] = space.layer_values(c.config, kind)
    if rec["pred_ms"] is None and lat_model is not None:
        rec["pred_ms"] = lat_model.predict(kernels)
    rec.update(judge.fields(cm))
    return rec, cm, t0


def _finish_trial(rec: dict, m, base, goal, t0: float) -> dict:
    """Fill ``rec`` from the device's measurement ``m``."""
    rec["measured"] = True
    rec["so_path"] = m.so_path
    rec.update(getattr(m, "details", {}))    # e.g. simulated / measured parts, also on failure
    if not m.ok:
        rec["error"] = m.error
    else:
        rec["status"] = "ok"
        rec["latency_ms"] = m.latency_ms
        rec["raw_ms"] = m.raw_ms
        rec["paired"] = m.paired
        rec["speedup"] = base["latency_ms"] / m.latency_ms
        # accuracy: the upper bound of the drop must be within budget and the interval narrow
        # enough to tell (pfcompile.search.judge); latency / size: the goal's budgets
        rec["feasible"] = (goal.feasible(m.latency_ms, rec.get("acc_drop_upper", rec["acc_drop"]),
                                         rec["size_mb"]) and not rec.get("acc_refused"))
    rec["seconds"] = time.time() - t0
    rec["time"] = time.time()
    return rec
