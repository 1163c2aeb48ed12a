"""The search space: one knob per prunable channel group of the passes'
dependency analysis (``pfcompile.passes.depgraph.dependency_groups``; keep
count, rounded to whole vectors of the target's fp32 lanes, from the smallest
fraction the pruning pass's declared ratios allow: :mod:`pfcompile.search.knobs`),
declared once as frozen data and used both to validate a config and to sample
one. :func:`compress` applies a config with the real pruning pass
(``pfcompile.passes.prune``): LASSO channel selection with least-squares
reconstruction when calibration data is given, L1 otherwise.

A config is a plain ``dict`` knob name -> value, so it goes to JSON as is.
Per-layer ``bits:<layer>`` and ``sparsity:<layer>`` knobs (one per weighted
Conv / Gemm / MatMul layer) are added when asked for (``build_space(bits=...,
sparsity=...)``; choices and their meaning in :mod:`pfcompile.search.knobs`).
:func:`compress` applies keep, then sparsity, then bits.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np
import onnx

from pfcompile.data import Dataset
from pfcompile.errors import ConfigError, PassError
from pfcompile.ir import to_ir, to_proto
from pfcompile.passes.depgraph import dependency_groups
from pfcompile.passes.prune import prune
from pfcompile.passes.prune_config import PruneConfig
from pfcompile.passes.qlayers import weighted_layers
from pfcompile.search.knobs import FLOAT_BITS, apply_bits, apply_sparsity, default_min_keep

__all__ = ["Knob", "SearchSpace", "build_space", "compress", "config_hash", "prune_config"]

_UNMODIFIED = {"bits": FLOAT_BITS, "sparsity": 0.0}  # the value that leaves a layer as it is


@dataclass(frozen=True)
class Knob:
    """One decision: ``kind`` is ``keep`` (channels kept in group ``target``),
    ``bits`` or ``sparsity`` (of layer ``target``)."""

    name: str
    kind: str
    target: str
    choices: tuple
    default: object
    full: int = 0            # channels of the unpruned group (keep knobs)
    description: str = ""

    def validate(self, value) -> None:
        if value not in self.choices:
            raise ConfigError(f"knob '{self.name}': value {value!r} is not one of {list(self.choices)}")


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SearchSpace:
    knobs: tuple[Knob, ...]
    lanes: int = 8
    meta: dict = field(default_factory=dict, compare=False)

    def __len__(self) -> int:
        return len(self.knobs)

    @property
    def size(self) -> float:
        return float(np.prod([len(k.choices) for k in self.knobs])) if self.knobs else 1.0

    def default(self) -> dict:
        return {k.name: k.default for k in self.knobs}

    def validate(self, config: dict) -> None:
        names = {k.name for k in self.knobs}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ConfigError(f"config names unknown knob(s) {unknown}; the space has {sorted(names)}")
        for k in self.knobs:
            if k.name in config:
                k.validate(config[k.name])

    def sample(self, rng: np.random.Generator) -> dict:
        """Each knob uniform over its choices."""
        return {k.name: k.choices[int(rng.integers(len(k.choices)))] for k in self.knobs}

    def sample_around(self, rng: np.random.Generator, ratio: float, spread: float = 0.15) -> dict:
        """Keep ratios drawn around ``ratio``: covers light and heavy pruning alike."""
        cfg = {}
        for k in self.knobs:
            if k.kind == "keep":
                r = float(np.clip(ratio + rng.normal(0, spread), 0, 1))
                cfg[k.name] = self._nearest(k, r * k.full)
            else:
                cfg[k.name] = k.choices[int(rng.integers(len(k.choices)))]
        return cfg

    def uniform(self, ratio: float) -> dict:
        """One keep ratio everywhere (rounded to each knob's nearest choice)."""
        return {k.name: (self._nearest(k, ratio * k.full) if k.kind == "keep" else k.default)
                for k in self.knobs}

    def mutate(self, config: dict, rng: np.random.Generator, n: int = 2) -> dict:
        """Move ``n`` random knobs one step up or down."""
        out = dict(config)
        for i in rng.choice(len(self.knobs), size=min(n, len(self.knobs)), replace=False):
            k = self.knobs[int(i)]
            j = k.choices.index(out[k.name]) + int(rng.choice([-1, 1]))
            out[k.name] = k.choices[int(np.clip(j, 0, len(k.choices) - 1))]
        return out

    def keep_ratios(self, config: dict) -> dict[str, float]:
        return {k.target: config[k.name] / k.full for k in self.knobs if k.kind == "keep"}

    def layer_values(self, config: dict, kind: str) -> dict[str, object]:
        """Layer -> value of the ``kind`` (``bits`` / ``sparsity``) knobs that change the
        layer (not 32 bits / not 0.0 sparsity)."""
        unmodified = _UNMODIFIED[kind]
        return {k.target: config[k.name] for k in self.knobs
                if k.kind == kind and k.name in config and config[k.name] != unmodified}

    def kinds(self) -> tuple[str, ...]:
        """The knob kinds present, in a fixed order."""
        present = {k.kind for k in self.knobs}
        return tuple(x for x in ("keep", "sparsity", "bits") if x in present)

    @staticmethod
    def _nearest(k: Knob, channels: float):
        return min(k.choices, key=lambda c: (abs(c - channels), -c))

    def to_json(self) -> dict:
        return {"lanes": self.lanes, "knobs": [
            {"name": k.name, "kind": k.kind, "target": k.target, "choices": list(k.choices),
             "default": k.default, "full": k.full} for k in self.knobs]}


def _keep_choices(channels: int, lanes: int, min_keep: float, partitions: int = 1) -> tuple[int, ...]:
    # whole vectors, half vectors only for groups narrower than two vectors: fewer
    # choices per knob; half vectors are vectorized as such by the schedules
    # (codegen.templates.base.vector_chunk: before that fix an 8-of-16-lane layer ran 20x slower)
    step = lanes if channels >= 2 * lanes else max(1, lanes // 2)
    step = step * partitions // math.gcd(step, partitions)  # grouped convs: equal per part
    lo = max(step, math.ceil(min_keep * channels / step) * step)
    vals = {c for c in range(lo, channels + 1, step)} | {channels}
    return tuple(sorted(vals))


def build_space(model: onnx.ModelProto, hardware: dict | None = None, *,
                min_keep: float | None = None, bits: tuple[int, ...] | None = None,
                sparsity: tuple[float, ...] | None = None) -> SearchSpace:
    """Knobs from the model's prunable channel groups (the passes' dependency
    analysis); keep counts are multiples of the target's fp32 lanes (half that
    for groups narrower than two vectors, and of the group's partitions for grouped
    convs), from ``min_keep`` of the group's channels (rounded up to those multiples) to
    all of them. ``min_keep`` None = ``1 - max`` of the pruning pass's declared ratios
    (:func:`pfcompile.search.knobs.default_min_keep`: 0.25).

    ``bits`` / ``sparsity``: the choices of one ``bits:<layer>`` / ``sparsity:<layer>``
    knob per weighted layer (``pfcompile.search.knobs.parse_bits`` /
    ``parse_sparsity`` / ``bit_choices`` make them); None = no such knobs. The
    default is 32 (float) / 0.0 when it is a choice, else the first choice (then the
    default config is not the unmodified model: ``compress`` applies it)."""
    if min_keep is None:
        min_keep = default_min_keep()
    if not 0 < min_keep <= 1:
        raise ConfigError(f"min_keep must be in (0, 1], got {min_keep}")
    knobs = _keep_knobs(model, hardware, min_keep)
    lanes = int((hardware or {}).get("fp32_lanes", 8))
    if bits is not None or sparsity is not None:
        layers = weighted_layers(to_ir(model))
        for kind, choices in (("sparsity", sparsity), ("bits", bits)):
            unmodified = _UNMODIFIED[kind]
            if choices is None:
                continue
            choices = tuple(choices)
            if not choices or len(set(choices)) != len(choices):
                raise ConfigError(f"{kind} choices {list(choices)} must be non-empty and distinct")
            if len(choices) < 2:
                continue  # nothing to decide
            default = unmodified if unmodified in choices else choices[0]
            what = ("fraction of weights set to zero in layer" if kind == "sparsity"
                    else "bit width (32 = float) of layer")
            knobs += [Knob(f"{kind}:{x.name}", kind, x.name, choices, default, 0,
                           f"{what} {x.name} ({x.op_type})") for x in layers]
    return SearchSpace(tuple(knobs), lanes)


def _keep_knobs(model: onnx.ModelProto, hardware: dict | None, min_keep: float) -> list[Knob]:
    lanes = int((hardware or {}).get("fp32_lanes", 8))
    knobs = []
    for g in dependency_groups(model):
        if not g.prunable:
            continue
        ch = _keep_choices(g.channels, lanes, min_keep, max(1, g.partitions))
        if len(ch) < 2:
            continue
        knobs.append(Knob(f"keep:{g.id}", "keep", g.id, ch, g.channels, g.channels,
                          f"output channels kept in group {g.id} ({len(g.sources)} source(s))"))
    return knobs


def prune_config(space: SearchSpace, config: dict, criterion: str = "l1",
                 calib_samples: int = 32) -> PruneConfig:
    """The :class:`PruneConfig` for a search config: per-group ratios
    ``1 - keep/full`` (groups kept whole are left out)."""
    space.validate(config)
    ratios = {k.target: (k.full - int(config[k.name])) / k.full for k in space.knobs
              if k.kind == "keep" and int(config.get(k.name, k.full)) != k.full}
    return PruneConfig(group_ratios=ratios, criterion=criterion, calib_samples=calib_samples)


def compress(model: onnx.ModelProto, space: SearchSpace, config: dict,
             calib: Dataset | None = None, *, calib_samples: int = 32,
             quant_calib: Dataset | None = None) -> onnx.ModelProto:
    """Apply a config: keep (pruning pass: LASSO channel selection + least-squares
    reconstruction on ``calib_samples`` samples of ``calib`` when given, else L1 —
    same shapes, so L1 is also the cheap way to get a candidate's kernels), then
    sparsity (sparsify pass), then bits (quantize pass to QDQ, activation ranges
    calibrated on ``quant_calib``, else ``calib``). Deterministic.

    The default config returns an unchanged copy; raises ConfigError on a value
    that is not a knob's choice and PassError naming the knob(s) a pass could not
    apply (e.g. bits without calibration data).
    """
    pc = prune_config(space, config, "lasso" if calib is not None else "l1", calib_samples)
    sparse = space.layer_values(config, "sparsity")
    bits = space.layer_values(config, "bits")
    if not pc.group_ratios and not sparse and not bits:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        return m
    cur = prune(model, pc, calib).model if pc.group_ratios else to_ir(model)
    if sparse or bits:
        present = {x.name for x in weighted_layers(cur)}
        lost = sorted(f"{k.name}" for k in space.knobs if k.kind in ("sparsity", "bits")
                      and k.target in {**sparse, **bits} and k.target not in present)
        if lost:
            raise PassError(f"knob(s) {lost}: the layer is not a weighted layer of the pruned model")
    cur = apply_sparsity(cur, {n: float(v) for n, v in sparse.items()})
    cur = apply_bits(cur, {n: int(v) for n, v in bits.items()},
                     quant_calib if quant_calib is not None else calib)
    return to_proto(cur)
