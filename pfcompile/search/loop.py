"""The search loop: propose -> compress -> compile + measure on the device ->
evaluate -> log -> retrain -> repeat, until ``budget`` device measurements.

:func:`run_search` puts narrow roles together (MetaSchedule-style):

- the run log (:class:`~pfcompile.search.runlog.RunLog`): every baseline, trial and kernel
  measurement is appended to ``RUN_DIR/trials.jsonl`` (flushed and fsynced) the moment it
  exists; a rerun with the same RUN_DIR (``--resume``) replays the log and continues, so a
  kill loses at most the trials in flight;
- the candidate factory (:class:`~pfcompile.search.candidates.CandidateFactory`):
  config -> compressed model and its kernels;
- the search device (:class:`~pfcompile.search.devices.SearchDevice`, every method
  required): a round's candidates are measured together, each logged as it arrives;
  compiled libraries live under ``RUN_DIR/artifacts/<model hash>/`` and are reused;
- the kernel timer and the trial runner (:mod:`pfcompile.search.trials`);
- the strategy (:mod:`pfcompile.search.strategies`) and the latency model
  (:mod:`pfcompile.search.latency_model`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import onnx

from pfcompile.data import Dataset
from pfcompile.errors import PfcompileError, SearchError
from pfcompile.model import model_hash
from pfcompile.search.candidates import CandidateFactory
from pfcompile.search.confirm import confirm_finalists, select_finalists, select_recoverable
from pfcompile.search.devices import SearchDevice
from pfcompile.search.evaluation import Evaluator
from pfcompile.search.graph import Kernel
from pfcompile.search.judge import AccuracyJudge, strategy_view
from pfcompile.search.knobs import default_min_keep, parse_bits, parse_sparsity
from pfcompile.search.latency_model import FlopsModel, LatencyModel
from pfcompile.search.runlog import RunLog, TrialLog
from pfcompile.search.sizing import SizeModel, set_measured_size, size_kind
from pfcompile.search.space import SearchSpace, build_space, config_hash
from pfcompile.search.state import load_strategy_state
from pfcompile.search.stats import check_confidence
from pfcompile.search.strategies import STRATEGIES, Goal, make_strategy
from pfcompile.search.trials import SearchKernelTimer, TrialRunner, acc_drop

__all__ = ["Deployer", "SearchResult", "SearchSettings", "TrialLog", "run_search"]


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
    min_keep: float = field(default_factory=default_min_keep)  # passes' declared ratios
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
    # fine-tuning runs (pfcompile.search.finalist): steer towards candidates whose drop
    # before fine-tuning is within this many points, and list them (``recoverable``) for
    # fine-tuning after the search; None: steer by max_acc_drop alone
    recover_drop: float | None = None

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
        if self.recover_drop is not None and not self.recover_drop >= 0:
            raise SearchError(f"--finetune-drop must be >= 0, got {self.recover_drop}")


class Deployer(Protocol):
    """How a config becomes the model the device runs, for targets that need more than the
    compression passes (FPGA-style accelerators: quantize to their integer form,
    ``pfcompile.search.accel_device.AccelDeployer``). Without one, a candidate is
    ``compress(model, space, config, calib)`` and its kernels are ``extract_kernels``."""

    def candidate(self, model: onnx.ModelProto, space: SearchSpace, config: dict,
                  calib: Dataset | None, calib_samples: int) -> onnx.ModelProto: ...

    def kernels(self, model: onnx.ModelProto, space: SearchSpace, config: dict) -> list[Kernel]: ...

    def adapt_space(self, space: SearchSpace) -> SearchSpace: ...


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
    # measured trials whose drop before fine-tuning is within ``recover_drop`` and that beat
    # ``best`` by the goal (faster, or in budget), best first (select_recoverable)
    recoverable: list[dict] = field(default_factory=list)
    model_of: Callable[[dict], onnx.ModelProto] | None = field(default=None, repr=False)


def run_search(model: onnx.ModelProto, target, device: SearchDevice, data: Dataset,
               run_dir: str | Path, settings: SearchSettings = SearchSettings(), *,
               cache_dir: str | Path | None = None, calib: Dataset | None = None,
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
    emit = on_event or (lambda kind, info: None)
    log = RunLog(run_dir)
    mhash = model_hash(model)
    log.start(mhash, settings.strategy, target.name, settings, data, confirm)

    space = build_space(model, target.hardware, min_keep=settings.min_keep,
                        bits=parse_bits(settings.bits, target, size_goal=settings.size_mb is not None),
                        sparsity=parse_sparsity(settings.sparsity))
    if deploy is not None:
        space = deploy.adapt_space(space)      # e.g. only the widths an accelerator runs
    # bits knobs calibrate activation ranges on the calibration data, else on --data
    qcalib = calib if calib is not None else data.subset(min(settings.calib_samples, len(data)))
    sizes = SizeModel()   # code bytes per kind, from the artifacts measured (also before a resume)
    for r in log.past:
        if r.get("type") in ("baseline", "trial") and r.get("size"):
            sizes.observe(r.get("size_kind", "float"), r["size"]["code_bytes"])
    cands = CandidateFactory(model, space, calib=calib, quant_calib=qcalib,
                             calib_samples=settings.calib_samples, deploy=deploy, sizes=sizes)
    evaluator = Evaluator(model, data)
    judge = AccuracyJudge(evaluator, settings.max_acc_drop, settings.confidence,
                          "search" if confirm is not None else "validation")
    cjudge = None if confirm is None else AccuracyJudge(
        Evaluator(model, confirm), settings.max_acc_drop, settings.confidence, "confirmation")
    for j in (judge, cjudge):       # data too small for the budget: say so before searching
        if j is not None and j.too_small():
            emit("warning", {"text": j.too_small()})
    cheap = Evaluator(model, data.subset(min(settings.eval_subset, len(data))))
    base_kernels = cands.base_kernels()

    # latency model: kernel-level (warm from the cache) or FLOPs
    lanes = int(target.hardware.get("fp32_lanes", 8))
    lm_path = LatencyModel.path_for(cache_dir, target.name) if cache_dir else None
    if settings.strategy == "flops":
        lat_model: LatencyModel | FlopsModel | None = FlopsModel()
    elif settings.strategy in ("hw", "rl", "bo"):
        lat_model = LatencyModel.load(lm_path, target.name, lanes) if lm_path else LatencyModel(target.name, lanes)
    else:
        lat_model = None
    time_kernels = SearchKernelTimer(lat_model, device, log, lm_path, emit)

    base = _baseline(log, cands, device, evaluator, base_kernels, lat_model, time_kernels,
                     space, model, mhash, emit)
    if lat_model is not None:
        lat_model.update_model(base_kernels, base["latency_ms"])
    emit("baseline_done", base)
    goal = Goal(settings.max_acc_drop,
                settings.latency_ms if settings.speedup is None else base["latency_ms"] / settings.speedup,
                settings.size_mb)
    # what the strategy aims at: with fine-tuning to come, drops it may win back count
    steer = goal if settings.recover_drop is None else Goal(
        max(goal.max_acc_drop, settings.recover_drop), goal.latency_ms, goal.size_mb)

    def latency_of(cfg: dict) -> float:
        try:
            return lat_model.predict(cands.shaped(cfg))
        except PfcompileError:
            return math.inf

    def drop_of(cfg: dict) -> float:
        try:
            return acc_drop(cheap.reference.score, cheap.score(cands.candidate(cfg)[0]).score)
        except PfcompileError:
            return math.inf

    strat = make_strategy(settings.strategy, space, steer, settings.seed, settings.budget,
                          latency_of, drop_of, settings.pool, settings.min_keep,
                          latency_model=lat_model, kernels_of=lambda cfg: cands.candidate(cfg)[1],
                          size_of=cands.size_mb if settings.size_mb is not None else None)
    strat.seen.add(config_hash(space.default()))  # the baseline is measured already
    saved_state = load_strategy_state(run_dir)
    if saved_state is not None:
        strat.load_state_dict(saved_state)
    trials = log.of_type("trial")
    for r in trials:
        strat.tell(r["config"], strategy_view(r))
        if lat_model is not None and r["status"] == "ok":
            lat_model.update_model(cands.shaped(r["config"]), r["latency_ms"])
    if trials:
        emit("resumed", {"trials": len(trials)})

    runner = TrialRunner(space=space, candidates=cands, judge=judge, device=device,
                         log=log, strategy=strat, strategy_name=settings.strategy,
                         lat_model=lat_model, kernel_timer=time_kernels,
                         kernels_per_trial=settings.kernels_per_trial, base=base, goal=goal,
                         emit=emit, trials=trials, steer=steer if steer is not goal else None)
    stall = 0
    while len(trials) < settings.budget:
        props = strat.propose(min(settings.batch, settings.budget - len(trials)))
        if not props:
            stall += 1
            if stall > 3:
                emit("exhausted", {"trials": len(trials)})
                break
            continue
        runner.round(props[:settings.budget - len(trials)])

    # feasible (qualified accuracy, goal met; faster than the original when fastest), best first
    ranked = select_finalists(trials, base, goal)
    best = ranked[0] if ranked else None
    confirmation = None
    if cjudge is not None:
        best, confirmation = confirm_finalists(ranked[:settings.finalists],
                                               lambda cfg: cands.candidate(cfg)[0], cjudge, log,
                                               log.past, emit)
    best_model = cands.candidate(best["config"])[0] if best else None
    top_model = (best_model if best is not None or not ranked
                 else cands.candidate(ranked[0]["config"])[0])
    n_dev = sum(1 for t in trials if t.get("measured"))
    recoverable = ([] if steer is goal else
                   select_recoverable(trials, base, goal, steer, best or (ranked[0] if ranked else None)))
    return SearchResult(run_dir, base, best, trials, n_dev, time_kernels.count, space, goal,
                        device.emulated, settings.strategy, best_model, device.simulated,
                        cands.base_model() if deploy is not None else None,
                        confirmation, ranked[:settings.finalists], cjudge, judge, top_model,
                        recoverable, lambda cfg: cands.candidate(cfg)[0])


def _baseline(log: RunLog, cands: CandidateFactory, device: SearchDevice, evaluator: Evaluator,
              base_kernels: list[Kernel], lat_model, time_kernels: SearchKernelTimer,
              space: SearchSpace, model: onnx.ModelProto, mhash: str, emit) -> dict:
    """The baseline record: measured (not counted in the budget; paired timing's
    reference from then on) and logged, or the logged one of a resumed run."""
    base = log.baseline
    base_model = cands.base_model()
    work = log.run_dir / "artifacts" / model_hash(base_model)
    if base is not None:  # resumed: pair with the logged baseline's scale
        device.set_reference(base_model, work, given=base["latency_ms"])
        return base
    emit("baseline", {})
    time_kernels(base_kernels, None)
    m = device.set_reference(base_model, work)
    if not m.ok:
        raise SearchError(f"the unmodified model failed on device {device.name}: {m.error}")
    acc = evaluator.reference
    base = {"type": "baseline", "latency_ms": m.latency_ms, "top1": acc.top1,
            "agreement": acc.agreement, "score": acc.score,
            "macs": sum(k.macs for k in base_kernels),
            "size_mb": cands.sizes.predict_mb(base_model), "size_kind": size_kind(base_model),
            "model_hash": mhash, "so_path": m.so_path, "n_eval": acc.n, "time": time.time(),
            **m.details}
    set_measured_size(base, m.so_path)
    if base.get("size"):
        cands.sizes.observe(base["size_kind"], base["size"]["code_bytes"])
    if cands.deploy is not None:   # the deployed baseline (e.g. uniform 8-bit) is not the original
        dacc = evaluator.score(base_model)
        base.update({"deployed_model_hash": model_hash(base_model), "deployed_top1": dacc.top1,
                     "deployed_score": dacc.score})
    log.append(base)
    if isinstance(lat_model, LatencyModel):  # seed with pruned shapes: one uniform candidate
        seeds = [space.uniform(0.5)]
        if "bits" in space.kinds():  # ... and its integer kernels at the narrowest width
            seeds.append({**seeds[0], **{k.name: k.choices[-1] for k in space.knobs
                                         if k.kind == "bits"}})
        for cfg in seeds:
            try:
                time_kernels(cands.shaped(cfg), None)
            except PfcompileError:
                pass
    return base
