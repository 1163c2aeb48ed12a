"""Weight sparsification: magnitude pruning per layer, unstructured or in blocks.

Each weighted layer's weight is seen as a 2-D (out_channels, fan_in) matrix
(:meth:`Layer.matrix`) and cut into ``r x c`` blocks (``1x1`` = unstructured,
``1x4`` = one output channel by four consecutive fan-in weights, ``4x4``);
blocks at the edge of a matrix whose sides are not multiples of the block are
smaller. The ``round(sparsity * n_blocks)`` blocks with the smallest L1 norm are
set to zero in the ONNX initializer. The graph is unchanged otherwise, so every
runtime runs the result; the saving is reported in CSR / BSR terms by
:func:`sparsity_report` (computed from the zeros actually in the model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import FunctionalPass, PassResult

from pfcompile.errors import ConfigError
from pfcompile.passes.declared import check_keys, search_fields
from pfcompile.passes.qlayers import Layer, as_ir, check_layer_names, layer_map, weighted_layers

__all__ = [
    "BLOCKS",
    "LayerSparsity",
    "SparsifyConfig",
    "SparsifyPass",
    "block_mask",
    "parse_block",
    "sparsify",
    "sparsity_report",
]

BLOCKS = ("1x1", "1x4", "4x4")
INDEX_BYTES = 4  # int32 column / row indices in the CSR / BSR accounting
VALUE_BYTES = 4  # float32 values
META_KEY = "pfcompile.sparsity"


def parse_block(block: str) -> tuple[int, int]:
    if block not in BLOCKS:
        raise ConfigError(f"block '{block}' is not one of {', '.join(BLOCKS)}")
    r, c = block.split("x")
    return int(r), int(c)


def _check_sparsity(s: float, where: str) -> float:
    try:
        s = float(s)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: sparsity must be a number in [0, 1), got {s!r}") from exc
    if not 0.0 <= s < 1.0:
        raise ConfigError(f"{where}: sparsity must be in [0, 1), got {s}")
    return s


@dataclass(frozen=True)
class SparsifyConfig:
    """Settings of the sparsify pass; field metadata gives each one's search values."""

    sparsity: float = field(default=0.5, metadata={
        "help": "fraction of each layer's weights (blocks) set to zero, in [0, 1)",
        "search": (0.0, 0.25, 0.5, 0.625, 0.75, 0.875), "per_layer": True})
    block: str = field(default="1x1", metadata={
        "help": "block shape r x c over the (out_channels, fan_in) weight matrix",
        "search": BLOCKS, "per_layer": False})
    layers: tuple[tuple[str, float], ...] = field(default=(), metadata={
        "help": "per-layer sparsity overriding `sparsity` (layer name, sparsity)"})

    def __post_init__(self) -> None:
        _check_sparsity(self.sparsity, "SparsifyConfig.sparsity")
        parse_block(self.block)
        for name, s in self.layers:
            _check_sparsity(s, f"sparsity of layer '{name}'")

    def sparsity_of(self, layer: str) -> float:
        return dict(self.layers).get(layer, self.sparsity)

    @staticmethod
    def search_space() -> dict[str, dict]:
        """Field name -> {"search": values, "per_layer": bool, "help": text}."""
        return search_fields(SparsifyConfig)

    @staticmethod
    def from_json(d: dict) -> SparsifyConfig:
        """``{"sparsity": 0.5, "block": "1x4", "layers": {"name": 0.7}}``, or a flat
        ``{"layer name": sparsity}`` map (other layers then keep their weights)."""
        if not isinstance(d, dict):
            raise ConfigError("a sparsify config must be a JSON object")
        known = {"sparsity", "block", "layers"}
        if d and not (set(d) & known):
            d = {"sparsity": 0.0, "layers": d}
        check_keys(d, known, "sparsify config")
        layers = d.get("layers", {})
        if not isinstance(layers, dict):
            raise ConfigError("sparsify config 'layers' must map layer names to sparsities")
        return SparsifyConfig(sparsity=d.get("sparsity", 0.5), block=d.get("block", "1x1"),
                              layers=tuple(sorted((str(k), float(v)) for k, v in layers.items())))

    def to_json(self) -> dict:
        return {"sparsity": self.sparsity, "block": self.block, "layers": dict(self.layers)}


def block_mask(m: np.ndarray, sparsity: float, block: tuple[int, int]) -> np.ndarray:
    """Boolean keep-mask of a 2-D matrix: the smallest-L1 ``round(sparsity*n)`` blocks are False."""
    r, c = block
    rows, cols = m.shape
    br, bc = -(-rows // r), -(-cols // c)
    padded = np.zeros((br * r, bc * c), dtype=np.float64)
    padded[:rows, :cols] = np.abs(m)
    norms = padded.reshape(br, r, bc, c).sum(axis=(1, 3)).ravel()
    n_zero = round(sparsity * norms.size)
    keep_blocks = np.ones(norms.size, dtype=bool)
    if n_zero > 0:
        keep_blocks[np.argsort(norms, kind="stable")[:n_zero]] = False
    keep = np.repeat(np.repeat(keep_blocks.reshape(br, bc), r, axis=0), c, axis=1)
    return keep[:rows, :cols]


class SparsifyPass(FunctionalPass):
    """Zero the smallest-magnitude weights (or blocks) of every weighted layer."""

    def __init__(self, config: SparsifyConfig | None = None) -> None:
        self.config = config or SparsifyConfig()

    def call(self, model: ir.Model) -> PassResult:
        # validated here, not in requires(): the pass base wraps requires() errors
        check_layer_names([n for n, _ in self.config.layers], layer_map(model), "the sparsify config")
        out = model.clone()
        block = parse_block(self.config.block)
        modified = False
        for layer in weighted_layers(out):
            s = self.config.sparsity_of(layer.name)
            if s <= 0:
                continue
            w = layer.weight_array
            m = layer.matrix(w)
            keep = block_mask(m, s, block)
            newly_zero = int(np.count_nonzero(m[~keep]))
            if newly_zero == 0:
                continue
            new_w = layer.from_matrix(np.where(keep, m, 0).astype(w.dtype), w)
            layer.weight.const_value = ir.tensor(new_w, name=layer.weight.name)
            modified = True
        if modified:
            out.metadata_props[META_KEY] = json.dumps(self.config.to_json(), sort_keys=True)
        return PassResult(out, modified)


def sparsify(model: ir.Model | onnx.ModelProto, config: SparsifyConfig | None = None) -> PassResult:
    """Functional entry point: a new ir.Model with zeros in the weight initializers."""
    return SparsifyPass(config)(as_ir(model))


@dataclass(frozen=True)
class LayerSparsity:
    """Zeros in one layer's weight and what they would save in CSR / BSR storage."""

    layer: str
    op_type: str
    shape: tuple[int, ...]
    numel: int
    nonzeros: int
    block: str
    nonzero_blocks: int
    dense_bytes: int
    csr_bytes: int
    bsr_bytes: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.numel if self.numel else 0.0

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["shape"] = list(self.shape)
        d["sparsity"] = round(self.sparsity, 6)
        return d


def _layer_sparsity(layer: Layer, block: tuple[int, int]) -> LayerSparsity:
    w = layer.weight_array
    m = layer.matrix(w)
    rows, cols = m.shape
    r, c = block
    nz = int(np.count_nonzero(m))
    br, bc = -(-rows // r), -(-cols // c)
    padded = np.zeros((br * r, bc * c), dtype=bool)
    padded[:rows, :cols] = m != 0
    nz_blocks = int(padded.reshape(br, r, bc, c).any(axis=(1, 3)).sum())
    csr = nz * (VALUE_BYTES + INDEX_BYTES) + (rows + 1) * INDEX_BYTES
    bsr = nz_blocks * (r * c * VALUE_BYTES + INDEX_BYTES) + (br + 1) * INDEX_BYTES
    return LayerSparsity(layer.name, layer.op_type, tuple(int(d) for d in w.shape), int(w.size),
                         nz, f"{r}x{c}", nz_blocks, int(w.size) * VALUE_BYTES, csr, bsr)


def sparsity_report(model: ir.Model | onnx.ModelProto, block: str | None = None) -> dict:
    """Per-layer nonzeros and compressed sizes, from the zeros in the model's weights.

    ``block`` defaults to the one recorded by the sparsify pass (else ``1x1``).
    Returns ``{"block", "layers": [...], "total": {...}}`` (JSON-ready).
    """
    m = as_ir(model)
    if block is None:
        meta = m.metadata_props.get(META_KEY)
        block = json.loads(meta)["block"] if meta else "1x1"
    b = parse_block(block)
    rows = [_layer_sparsity(layer, b) for layer in weighted_layers(m)]
    total = {k: sum(getattr(r, k) for r in rows)
             for k in ("numel", "nonzeros", "dense_bytes", "csr_bytes", "bsr_bytes")}
    total["sparsity"] = round(1 - total["nonzeros"] / total["numel"], 6) if total["numel"] else 0.0
    return {"block": block, "layers": [r.to_json() for r in rows], "total": total}
