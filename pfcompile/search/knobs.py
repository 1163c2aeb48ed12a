"""Per-knob choices, read from the passes' declared search values and the target, and
how a config's per-layer values are applied (with the real passes:
:mod:`pfcompile.passes.sparsify`, :mod:`pfcompile.passes.quantize`).

Declared values. Each pass config declares the values a search may try, once, in its
field metadata (:mod:`pfcompile.passes.declared`); :func:`declared_search_values` reads
them per knob kind, and every choice below is derived from them:

- ``keep`` (channels kept in one prunable group): ``PruneConfig.ratio``'s values are the
  fractions of a group's channels a search may remove. The space keeps whole vectors of
  the target's fp32 lanes (half vectors for groups narrower than two vectors, a multiple
  of the partitions for grouped convs: :func:`pfcompile.search.space.build_space`), so a
  declared ratio need not land on a whole vector; the declaration bounds the range: a
  group keeps at least ``min_keep = 1 - max(declared ratio)`` of its channels
  (:func:`default_min_keep`; 0.75 declared -> 0.25), rounded up to whole vectors, and
  every whole-vector count from there to all channels is a choice.
- ``bits`` (per-layer weight width): ``QuantConfig.bits``'s values (the widths the
  quantize pass writes, 2..8) intersected with the widths the target runs.
- ``sparsity`` (per-layer fraction of zero weights): ``SparsifyConfig.sparsity``'s values.

Bit widths. ``32`` means the layer stays float (the unmodified layer, so it is
always a choice and the default). Any other width ``b`` is a QDQ layer from the
quantize pass: int8-container weights clipped to ``b`` bits, per-channel
symmetric, and the layer's input activation quantized to uint8 (8 bits) over
the calibrated range. On CPU targets ``auto`` offers 8 (:data:`CPU_BITS`): pfcompile's
compiler lowers an int8 QDQ layer to an integer kernel (``pfcompile.quantexec``);
narrower weights run the same kernel (no faster, less accurate) but are stored
bit-packed in the library (``pfcompile.storage``), so with a ``--size-mb`` goal
``auto`` offers 4 bits too (:data:`CPU_SIZE_BITS`), and any declared width may be
listed. A CPU width the quantize pass does not declare is a ConfigError. On accelerator
targets (``[accelerator]`` in the target file) the choices are the accelerator's
``weight_bits`` that the quantize pass declares, widest first (a hardware width no pass
writes is not offered; none at all is a ConfigError): :func:`bit_choices` is what
``pfcompile run --target fpga-*`` builds its knobs from.

Sparsity. A layer's fraction of weights set to zero by the sparsify pass
(unstructured, ``1x1`` blocks); ``0.0`` is the unmodified layer. The choices
offered by ``--sparsity auto`` are the sparsify pass's declared search values.
The zeros stay in the dense ONNX
initializers and the kernels are dense (no latency change), but the library
stores a sparse layer as a bitmap + its non-zeros (``pfcompile.storage``): sparsity
buys deployed size.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from pfcompile.data import Dataset
from pfcompile.errors import ConfigError, PassError, PfcompileError
from pfcompile.passes.prune_config import PruneConfig
from pfcompile.passes.quantize import QuantConfig, quantize
from pfcompile.passes.sparsify import SparsifyConfig, sparsify
from pfcompile.targets import Target

__all__ = [
    "CPU_BITS",
    "CPU_SIZE_BITS",
    "FLOAT_BITS",
    "apply_bits",
    "apply_sparsity",
    "bit_choices",
    "declared_search_values",
    "default_min_keep",
    "parse_bits",
    "parse_sparsity",
    "sparsity_choices",
]

FLOAT_BITS = 32
CPU_BITS = (FLOAT_BITS, 8)  #: what ``auto`` offers on CPU targets (8: the integer kernels)
CPU_SIZE_BITS = (4,)  #: also offered by ``auto`` on CPU targets with a size goal


def declared_search_values() -> dict[str, tuple]:
    """Knob kind -> the values its pass declares a search may try: ``keep`` -> the
    fractions of channels ``PruneConfig.ratio`` may remove, ``bits`` -> the weight widths of
    ``QuantConfig.bits``, ``sparsity`` -> ``SparsifyConfig.sparsity``'s fractions."""
    return {
        "keep": tuple(float(r) for r in PruneConfig.search_space()["ratio"]),
        "bits": tuple(int(b) for b in QuantConfig.search_space()["bits"]["search"]),
        "sparsity": tuple(float(s) for s in SparsifyConfig.search_space()["sparsity"]["search"]),
    }


def default_min_keep() -> float:
    """The smallest fraction of a group's channels the keep knobs keep: ``1 - max`` of the
    pruning pass's declared ratios (see the module docstring)."""
    return 1.0 - max(declared_search_values()["keep"])


def _declared_widths(asked: Sequence[int], where: str) -> tuple[int, ...]:
    declared = declared_search_values()["bits"]
    missing = [b for b in asked if b not in declared]
    if missing:
        raise ConfigError(f"{where} asks for {missing}-bit layers, but the quantize pass declares "
                          f"only {list(declared)} (QuantConfig.bits search values): declare the "
                          f"width there or drop it from {where}")
    return tuple(asked)


def _cpu_widths(size_goal: bool) -> tuple[int, ...]:
    return _declared_widths(CPU_BITS[1:] + (CPU_SIZE_BITS if size_goal else ()),
                            "the CPU bit choices (search.knobs.CPU_BITS / CPU_SIZE_BITS)")


def bit_choices(target: Target, *, include_float: bool = True,
                size_goal: bool = False) -> tuple[int, ...]:
    """The per-layer bit widths ``target`` runs that the quantize pass declares, widest first.

    CPU targets: ``(32, 8)``, and 4 with ``size_goal`` (a ``--size-mb`` search: 4-bit
    weights are stored packed, half the bytes of 8-bit). Accelerator targets: 32 (the layer
    runs on the host in float) and the ``[accelerator] weight_bits`` the quantize pass
    declares. ``include_float=False`` leaves out 32 (for a search where every layer must be
    quantized; its knobs' default is then the widest integer width, so the space's
    default config is the all-integer model, not the unmodified one: a caller
    measuring the float model as its baseline should not mark the default as seen)."""
    if target.is_accelerator:
        from pfcompile.accel.config import AccelConfig

        cfg = AccelConfig.from_target(target)
        declared = declared_search_values()["bits"]
        widths = sorted({int(b) for b in cfg.weight_bits if int(b) in declared}, reverse=True)
        if not widths:
            raise ConfigError(f"target '{target.name}': [accelerator] weight_bits "
                              f"{list(cfg.weight_bits)} has no width the quantize pass declares "
                              f"({list(declared)})")
        out = tuple(widths)
    else:
        out = _cpu_widths(size_goal)
    return ((FLOAT_BITS,) if include_float else ()) + out


def _items(spec: str | Sequence, flag: str) -> list[str]:
    if isinstance(spec, str):
        items = [s.strip() for s in spec.split(",")]
    else:
        items = [str(s).strip() for s in spec]
    if not items or any(not s for s in items):
        raise ConfigError(f"{flag} {spec!r}: give comma-separated values (e.g. {flag} 8,32) or 'auto'")
    return items


def _mode(spec) -> str | None:
    """``off`` (None, '', 'off', 'none'), ``auto``, or None for a list of values."""
    if spec is None:
        return "off"
    if isinstance(spec, str):
        word = spec.strip().lower()
        if word in ("", "off", "none"):
            return "off"
        if word == "auto":
            return "auto"
    return None


def _values(spec: str | Sequence, flag: str, convert, what: str) -> list:
    out = []
    for s in _items(spec, flag):
        try:
            out.append(convert(s))
        except ValueError as exc:
            raise ConfigError(f"{flag}: '{s}' is not {what}") from exc
    return out


def parse_bits(spec: str | Sequence[int] | None, target: Target, *,
               size_goal: bool = False) -> tuple[int, ...] | None:
    """``--bits`` -> the knobs' choices (widest first, 32 always included), or None
    when off. ``auto`` = :func:`bit_choices`; listed widths must be ones the target runs
    (on CPU targets: any width the quantize pass declares, 2..8)."""
    mode = _mode(spec)
    if mode == "off":
        return None
    if mode == "auto":
        return bit_choices(target, size_goal=size_goal)
    allowed = bit_choices(target) if target.is_accelerator else \
        (FLOAT_BITS, *sorted(declared_search_values()["bits"], reverse=True))
    vals = _values(spec, "--bits", int, "an integer bit width")
    for b in vals:
        if b not in allowed:
            raise ConfigError(f"--bits: target '{target.name}' runs layers at {list(allowed)} bits "
                              f"(32 = float), not {b}")
    return tuple(sorted({*vals, FLOAT_BITS}, reverse=True))


def sparsity_choices() -> tuple[float, ...]:
    """The sparsify pass's declared per-layer search values."""
    return declared_search_values()["sparsity"]


def parse_sparsity(spec: str | Sequence[float] | None) -> tuple[float, ...] | None:
    """``--sparsity`` -> the knobs' choices (ascending, 0 always included), or None
    when off; ``auto`` = :func:`sparsity_choices`."""
    mode = _mode(spec)
    if mode == "off":
        return None
    vals = list(sparsity_choices()) if mode == "auto" else \
        _values(spec, "--sparsity", float, "a number")
    for v in vals:
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"--sparsity: {v} is not in [0, 1)")
    return tuple(sorted({*vals, 0.0}))


def _knob_names(kind: str, layers) -> list[str]:
    return [f"{kind}:{n}" for n in layers]


def apply_sparsity(model: ir.Model, per_layer: dict[str, float]) -> ir.Model:
    """Zero ``per_layer[name]`` of each named layer's weights (sparsify pass, 1x1)."""
    todo = {n: float(s) for n, s in per_layer.items() if float(s) > 0}
    if not todo:
        return model
    try:
        cfg = SparsifyConfig(sparsity=0.0, block="1x1", layers=tuple(sorted(todo.items())))
        return sparsify(model, cfg).model
    except PfcompileError as exc:
        raise PassError(f"knob(s) {_knob_names('sparsity', todo)}: the sparsify pass failed: {exc}") from exc


def apply_bits(model: ir.Model, per_layer: dict[str, int], calib: Dataset | None) -> ir.Model:
    """Quantize each named layer with bits < 32 to QDQ (quantize pass: per-channel
    weights at its bits, uint8 input activations calibrated on ``calib``, bias
    correction); the other weighted layers stay float."""
    todo = {n: int(b) for n, b in per_layer.items() if int(b) != FLOAT_BITS}
    if not todo:
        return model
    names = _knob_names("bits", todo)
    if calib is None:
        raise PassError(f"knob(s) {names} quantize layers and need calibration data for the "
                        "activation ranges (pass --calib or --data)")
    from pfcompile.passes.qlayers import weighted_layers

    skip = tuple(x.name for x in weighted_layers(model) if x.name not in todo)
    try:
        cfg = QuantConfig(bits=8, layers=tuple(sorted(todo.items())), skip=skip)
        return quantize(model, cfg, calib).model
    except PfcompileError as exc:
        raise PassError(f"knob(s) {names}: the quantize pass failed: {exc}") from exc
