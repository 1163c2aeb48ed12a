"""A greedy per-layer bit-width search for an FPGA-style target: the baseline that
``tools/bench_fpga.py`` compares ``pfcompile run --target fpga-*`` against (HAQ's
question, a simple answer). Not part of pfcompile: its one search is
:mod:`pfcompile.search.loop`, whose ``bits`` knobs set per-layer weight widths; this
baseline also moves activation widths, which the loop does not search.

Latency is the simulator's cycle model (per layer, at that layer's widths, with the best
tiling); accuracy is measured by a caller-supplied ``evaluate(model) -> accuracy`` (for
example onnxruntime on the fake-quant QDQ model over validation data). The search is
greedy, ranked by sensitivity:

1. from the all-8-bit policy, try every single *move* alone: a layer's weights to 4 or
   2 bits, an activation tensor (every layer reading it) to 4 bits; measure its cycle
   saving and accuracy drop;
2. rank the moves by ``saving / (drop + 0.2 points)``, drop those that save nothing on
   this target;
3. apply them in that order, keeping a move only if the accuracy of the policy so far
   stays within ``max_drop`` of the reference accuracy.

Every evaluation is appended to a JSON-lines log the moment it exists. Channels are not
searched here (the pruning passes live in ``pfcompile/passes``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from pfcompile.accel.config import AccelConfig
from pfcompile.accel.mixed import set_layer_bits
from pfcompile.accel.qgraph import QLayer, partition_model
from pfcompile.accel.tiling import TilingDB, search_tiling
from pfcompile.errors import SearchError

__all__ = ["AccelCostModel", "BitPolicy", "BitSearchResult", "BitSearchSettings", "search_bits"]

Bits = dict[str, tuple[int, int]]


@dataclass(frozen=True)
class BitSearchSettings:
    weight_options: tuple[int, ...] = (4, 2)      # widths below 8 to try for weights
    act_options: tuple[int, ...] = (4,)           # widths below 8 to try for activations
    max_drop: float = 0.01                        # accuracy (fraction) below the reference
    eps: float = 0.002                            # drop floor in the ranking


@dataclass
class BitPolicy:
    bits: Bits
    cycles: int
    accuracy: float

    def to_json(self) -> dict:
        return {"bits": {k: list(v) for k, v in self.bits.items()}, "cycles": self.cycles,
                "accuracy": self.accuracy}


@dataclass
class BitSearchResult:
    target: str
    best: BitPolicy
    uniform8: BitPolicy
    evaluations: int
    seconds: float
    history: list[dict] = field(default_factory=list)


class AccelCostModel:
    """Cycles of a bit policy on one accelerator: per layer, best tiling at its widths."""

    def __init__(self, qdq: onnx.ModelProto, cfg: AccelConfig, db: TilingDB | None = None) -> None:
        self.cfg = cfg
        self.db = db
        part = partition_model(qdq, cfg)
        self.layers: dict[str, QLayer] = {lay.name: lay for lay in part.layers}
        if not self.layers:
            raise SearchError(f"no accelerator layers in the model for '{cfg.name}'")
        self.readers: dict[str, list[str]] = {}
        for lay in self.layers.values():
            self.readers.setdefault(lay.x, []).append(lay.name)
        self._memo: dict[tuple[str, int, int], int] = {}

    def effective(self, bits: Bits) -> Bits:
        """Widths as built: an activation takes the widest request of its readers."""
        act: dict[str, int] = {}
        for name, lay in self.layers.items():
            act[lay.x] = max(act.get(lay.x, 0), bits.get(name, (8, 8))[1])
        return {name: (bits.get(name, (8, 8))[0], act[lay.x]) for name, lay in self.layers.items()}

    def layer_cycles(self, name: str, w: int, a: int) -> int:
        key = (name, w, a)
        if key not in self._memo:
            lay = self.layers[name]
            widths = self.cfg.operand_bits(w, a)
            if widths is None:
                raise SearchError(f"'{self.cfg.name}' does not support {w}x{a} bits ({name})")
            _, cyc = search_tiling(replace(lay, wbits=w, abits=a), self.cfg, self.db)
            self._memo[key] = int(cyc)
        return self._memo[key]

    def cycles(self, bits: Bits) -> int:
        return sum(self.layer_cycles(n, w, a) for n, (w, a) in self.effective(bits).items())


def search_bits(qdq: onnx.ModelProto, cfg: AccelConfig,
                evaluate: Callable[[onnx.ModelProto], float], reference_accuracy: float, *,
                float_model: onnx.ModelProto | None = None,
                settings: BitSearchSettings = BitSearchSettings(),
                log_path: str | Path | None = None, db: TilingDB | None = None
                ) -> BitSearchResult:
    """Greedy sensitivity-ranked search; see the module docstring."""
    t0 = time.perf_counter()
    cost = AccelCostModel(qdq, cfg, db)
    floor = reference_accuracy - settings.max_drop
    history: list[dict] = []
    log = Path(log_path) if log_path else None
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)

    def record(kind: str, bits: Bits, acc: float, cyc: int, **extra) -> None:
        rec = {"target": cfg.name, "kind": kind, "accuracy": acc, "cycles": cyc,
               "bits": {k: list(v) for k, v in cost.effective(bits).items()
                        if v != (8, 8)}, **extra}
        history.append(rec)
        if log:
            with log.open("a") as f:
                f.write(json.dumps(rec) + "\n")

    def acc_of(bits: Bits) -> float:
        return float(evaluate(set_layer_bits(qdq, bits, float_model)))

    base: Bits = {n: (8, 8) for n in cost.layers}
    base_cyc = cost.cycles(base)
    base_acc = acc_of(base)
    record("uniform8", base, base_acc, base_cyc)
    moves: list[tuple[str, str, int]] = []
    for name in cost.layers:
        for w in settings.weight_options:
            if cfg.operand_bits(w, 8) is not None:
                moves.append(("w", name, w))
    for tensor in cost.readers:
        for a in settings.act_options:
            if cfg.operand_bits(8, a) is not None:
                moves.append(("a", tensor, a))

    def apply_move(bits: Bits, mv: tuple[str, str, int]) -> Bits:
        out = dict(bits)
        kind, key, b = mv
        if kind == "w":
            out[key] = (b, out[key][1])
        else:
            for name in cost.readers[key]:
                out[name] = (out[name][0], b)
        return out

    ranked: list[tuple[float, tuple[str, str, int]]] = []
    for mv in moves:
        cand = apply_move(base, mv)
        saving = base_cyc - cost.cycles(cand)
        if saving <= 0:
            continue                               # buys nothing on this target
        acc = acc_of(cand)
        record("probe", cand, acc, base_cyc - saving, move=list(mv), saving=saving)
        drop = max(base_acc - acc, 0.0)
        ranked.append((saving / (drop + settings.eps), mv))
    ranked.sort(key=lambda t: -t[0])
    state, state_acc = base, base_acc
    for _, mv in ranked:
        cand = apply_move(state, mv)
        if cost.cycles(cand) >= cost.cycles(state):
            continue
        acc = acc_of(cand)
        keep = acc >= floor
        record("step", cand, acc, cost.cycles(cand), move=list(mv), kept=keep)
        if keep:
            state, state_acc = cand, acc
    best = BitPolicy(cost.effective(state), cost.cycles(state), state_acc)
    return BitSearchResult(target=cfg.name, best=best,
                           uniform8=BitPolicy(cost.effective(base), base_cyc, base_acc),
                           evaluations=sum(1 for h in history), seconds=time.perf_counter() - t0,
                           history=history)
