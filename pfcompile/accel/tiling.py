"""Tiling of one accelerator layer: the schedule of the FPGA-style targets.

A :class:`Tiling` fixes the output-channel tile (in GEMM blocks), the input-channel tile
(in blocks), the output-row tile, the loop order (``oc_outer`` keeps a weight tile
resident across row tiles, ``row_outer`` keeps an input tile resident across
output-channel tiles) and which buffers are double-buffered (whenever two tiles fit).

Footprints (bytes): input tile ``ic * ((rows-1)*stride + KH) * ((OW-1)*stride + KW)``
(8-bit activations, padding included: it is made by the load unit), weight tile
``oc * ic * KH * KW * wbits / 8`` (packed), accumulator tile ``oc * rows * OW * 4``.

:func:`search_tiling` times every fitting candidate with the cycle model and keeps the
fastest; :class:`TilingDB` stores the winners as JSON lines under
``<target>/accel_tiling.jsonl`` keyed by (accelerator config, workload), so a later
compile reads the record instead of searching: the records shipped in
``pfcompile/records/`` and those appended to the cache's ``records/``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pfcompile import paths
from pfcompile.accel.config import AccelConfig
from pfcompile.accel.qgraph import QLayer
from pfcompile.errors import CompileError

__all__ = [
    "LayerDims",
    "Tiling",
    "TilingDB",
    "candidates",
    "config_key",
    "footprint",
    "layer_dims",
    "search_tiling",
]


@dataclass(frozen=True)
class Tiling:
    oc_blocks: int = 1
    ic_blocks: int = 1
    rows: int = 1
    order: str = "oc_outer"        # oc_outer | row_outer
    double_inp: bool = False
    double_wgt: bool = False
    double_acc: bool = False


@dataclass(frozen=True)
class LayerDims:
    c: int
    o: int
    c_pad: int
    o_pad: int
    h: int
    w: int
    oh: int
    ow: int
    kh: int
    kw: int
    sh: int
    sw: int
    pt: int
    pl: int


def layer_dims(layer: QLayer, cfg: AccelConfig) -> LayerDims:
    _, c, h, w = layer.in_shape
    _, o, oh, ow = layer.out_shape
    kh, kw = layer.weight.shape[2:]
    bi, bo = cfg.block_in, cfg.block_out
    return LayerDims(c=c, o=o, c_pad=-(-c // bi) * bi, o_pad=-(-o // bo) * bo, h=h, w=w, oh=oh,
                     ow=ow, kh=int(kh), kw=int(kw), sh=layer.stride[0], sw=layer.stride[1],
                     pt=layer.pads[0], pl=layer.pads[1])


def footprint(layer: QLayer, t: Tiling, cfg: AccelConfig) -> dict[str, int]:
    """Bytes one tile of each buffer takes (one slot)."""
    d = layer_dims(layer, cfg)
    wbits = (cfg.operand_bits(layer.wbits, layer.abits) or (8, 8))[0]
    oc, ic = t.oc_blocks * cfg.block_out, t.ic_blocks * cfg.block_in
    in_rows = (t.rows - 1) * d.sh + d.kh
    in_cols = (d.ow - 1) * d.sw + d.kw
    return {"inp": ic * in_rows * in_cols,
            "wgt": -(-oc * ic * d.kh * d.kw * wbits // 8),
            "acc": oc * t.rows * d.ow * cfg.acc_bits // 8}


def _capacity(cfg: AccelConfig) -> dict[str, int]:
    return {"inp": cfg.inp_bytes, "wgt": cfg.wgt_bytes, "acc": cfg.acc_bytes}


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def candidates(layer: QLayer, cfg: AccelConfig) -> list[Tiling]:
    """Every tiling whose single-buffered tiles fit; double-buffered where two fit.

    Raises CompileError naming the layer when even the smallest tile does not fit."""
    d = layer_dims(layer, cfg)
    cap = _capacity(cfg)
    smallest = footprint(layer, Tiling(), cfg)
    over = {b: (smallest[b], cap[b]) for b in cap if smallest[b] > cap[b]}
    if over:
        what = ", ".join(f"{b} tile {n} B > {c} B buffer" for b, (n, c) in over.items())
        raise CompileError(
            f"layer '{layer.name}' ({layer.kind} {layer.in_shape} -> {layer.out_shape}) cannot "
            f"be tiled for accelerator '{cfg.name}': even its smallest tile (1 output-channel "
            f"block x 1 input-channel block x 1 output row) does not fit ({what}); reduce the "
            f"feature-map width or run this layer on the host")
    rows = sorted(set(_divisors(d.oh)) | {r for r in (2, 4, 8) if r < d.oh})
    out: list[Tiling] = []
    for ob in _divisors(d.o_pad // cfg.block_out):
        for ib in _divisors(d.c_pad // cfg.block_in):
            for r in rows:
                base = Tiling(ob, ib, r)
                fp = footprint(layer, base, cfg)
                if any(fp[b] > cap[b] for b in cap):
                    continue
                dbl = {b: 2 * fp[b] <= cap[b] for b in cap}
                for order in ("oc_outer", "row_outer"):
                    out.append(Tiling(ob, ib, r, order, dbl["inp"], dbl["wgt"], dbl["acc"]))
    return out


def config_key(cfg: AccelConfig) -> str:
    return hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:16]




class TilingDB:
    """Append-only JSON-lines records of the best tiling per (config, workload)."""

    def __init__(self, path: str | Path | None, also_read: tuple[Path, ...] = ()) -> None:
        self.path = Path(path) if path else None
        self._best: dict[str, dict] = {}
        for src in (*also_read, *([self.path] if self.path else [])):
            if not Path(src).exists():
                continue
            for line in Path(src).read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    key = self._key(rec["config"], rec["workload"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue                      # a torn last line from a killed run
                if key not in self._best or rec["cycles"] < self._best[key]["cycles"]:
                    self._best[key] = rec

    @staticmethod
    def for_target(cfg: AccelConfig, root: str | Path | None = None) -> TilingDB:
        """``root`` given: that folder only. None: the records shipped with the package
        plus the cache's, new ones appended to the cache's (:mod:`pfcompile.paths`)."""
        name = f"{cfg.name}/accel_tiling.jsonl"
        if root:
            return TilingDB(Path(root) / name)
        return TilingDB(paths.records_dir() / name, also_read=(paths.shipped_records_dir() / name,))

    @staticmethod
    def _key(config: str, workload: dict) -> str:
        return config + ":" + json.dumps(workload, sort_keys=True)

    def lookup(self, cfg: AccelConfig, layer: QLayer) -> Tiling | None:
        rec = self._best.get(self._key(config_key(cfg), layer.workload()))
        return Tiling(**rec["tiling"]) if rec else None

    def add(self, cfg: AccelConfig, layer: QLayer, tiling: Tiling, cycles: float,
            n_candidates: int) -> None:
        rec = {"config": config_key(cfg), "target": cfg.name, "workload": layer.workload(),
               "tiling": asdict(tiling), "cycles": cycles, "candidates": n_candidates}
        key = self._key(rec["config"], rec["workload"])
        if key in self._best and self._best[key]["cycles"] <= cycles:
            return
        self._best[key] = rec
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(rec, sort_keys=True) + "\n")

    def __len__(self) -> int:
        return len(self._best)


_MEMO: dict[str, tuple[Tiling, float, int]] = {}


def search_tiling(layer: QLayer, cfg: AccelConfig, db: TilingDB | None = None
                  ) -> tuple[Tiling, float]:
    """The fastest fitting tiling by the cycle model (a record in ``db`` wins; the search
    result is appended to ``db``). Returns (tiling, cycles per image)."""
    from pfcompile.accel.isa import emit_layer
    from pfcompile.accel.sim import time_program

    if db is not None:
        hit = db.lookup(cfg, layer)
        if hit is not None:
            return hit, time_program(emit_layer(layer, hit, cfg), layer, cfg).cycles
    key = config_key(cfg) + json.dumps(layer.workload(), sort_keys=True)
    if key not in _MEMO:
        best: tuple[Tiling, float] | None = None
        cands = candidates(layer, cfg)
        for t in cands:
            cyc = time_program(emit_layer(layer, t, cfg), layer, cfg).cycles
            if best is None or cyc < best[1]:
                best = (t, cyc)
        assert best is not None            # candidates() raised if nothing fits
        _MEMO[key] = (best[0], best[1], len(cands))
    t, cyc, n = _MEMO[key]
    if db is not None:
        db.add(cfg, layer, t, cyc, n)
    return t, cyc
