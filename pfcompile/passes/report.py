"""What `pfcompile inspect` and `pfcompile prune` report, as plain data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx_ir as ir

from pfcompile import ir as pir
from pfcompile.data import Dataset, load_npz
from pfcompile.errors import ConfigError
from pfcompile.frontend import import_model
from pfcompile.model import input_specs
from pfcompile.passes.canonical import canonical_passes, canonicalize
from pfcompile.passes.canonical_bn import FoldBatchNormPass
from pfcompile.passes.depgraph import analyze
from pfcompile.passes.prune import PrunePass
from pfcompile.passes.prune_config import PruneConfig
from pfcompile.passes.stats import model_stats

__all__ = ["inspect_model", "prune_file"]


def inspect_model(model: pir.ModelLike) -> dict[str, Any]:
    """Layers, channel groups (prunable or frozen and why), MACs, params, bytes.

    ``result["config"]`` is a prune-config skeleton (every prunable group id at
    ratio 0) that ``PruneConfig.from_json`` reads, as does the whole result.
    """
    m = model.clone() if isinstance(model, ir.Model) else pir.to_ir(model)
    stats = model_stats(m)
    dg = analyze(canonical_passes(fold_bn=False)(m).model)
    return {
        "macs": stats.macs, "params": stats.params, "size_bytes": stats.size_bytes,
        "layers": [layer.to_json() for layer in stats.layers],
        "groups": [g.to_json() for g in dg.groups],
        "config": {"ratio": 0.0, "criterion": "l1", "round": 1,
                   "ratios": {g.id: 0.0 for g in dg.groups if g.prunable}},
    }


def prune_file(model_path: str | Path, out_path: str | Path, config: PruneConfig,
               data_path: str | Path | None = None,
               input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """Import (:mod:`pfcompile.frontend`), canonicalise (BN kept for the bn
    criterion), prune, fold BN, save.

    Nothing is written unless every step succeeded.
    """
    proto = import_model(model_path, input_shapes)
    calib: Dataset | None = None
    if data_path is not None:
        calib = load_npz(data_path, input_specs(proto))
    elif config.criterion == "lasso":
        raise ConfigError("criterion 'lasso' needs calibration data: pass --data calib.npz")
    model = canonicalize(proto, fold_bn=False).model
    before = model_stats(model)
    pp = PrunePass(config, calib)
    result = pp(model)
    out_model = FoldBatchNormPass()(result.model).model
    pir.infer_shapes(out_model)
    after = model_stats(out_model)
    pir.save(out_model, out_path)
    return {"output": str(out_path), "modified": result.modified,
            "macs_before": before.macs, "macs_after": after.macs,
            "params_before": before.params, "params_after": after.params,
            "size_bytes_before": before.size_bytes, "size_bytes_after": after.size_bytes,
            "removed_channels": pp.removed_channels, "config": config.to_json()}
