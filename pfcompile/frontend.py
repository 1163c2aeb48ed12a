"""The import front end every command that loads a model goes through.

Models trained elsewhere arrive with dynamic batch / height / width, old
opsets, weights held in ``Constant`` nodes and shape sub-graphs
(``Shape -> Gather -> Concat -> Reshape``) that TVM's importer and the channel
analysis cannot follow. :func:`import_model` turns such a file into the form
pfcompile's passes and compiler expect:

1. load and check (:func:`pfcompile.model.load_onnx`);
2. bind dynamic input dims from ``--input-shape`` (``name:1x3x48x192``); a dim
   that is only the batch (dim 0, every other dim static) defaults to
   ``batch`` (1 for compilation and compression; ``None`` keeps it free, for
   evaluation); any other dynamic dim without ``--input-shape`` is an error
   that names the flag;
3. upgrade the default-domain opset to at least :data:`MIN_OPSET`
   (onnx's version converter; a model it cannot convert keeps its opset);
4. lift ``Constant`` nodes to initializers (onnx-ir), so weights count as
   weights;
5. fold shape sub-graphs and constants: onnxscript's constant folder (onnx
   shape inference on, ``Shape`` of a static value folds to its dims); QDQ and
   random nodes are never folded (a QDQ weight is the representation, not a
   computation). docs/frontend.md compares it with onnx-ir's passes, onnxslim
   and onnxsim on the real-model suite and says why it was chosen;
6. shape inference (onnx, with data propagation);
7. the canonical clean-up available in the core layer (onnx-ir's Identity
   elimination, unique names, dead-node removal, topological sort). The
   compression commands then run :func:`pfcompile.passes.canonical.canonical_passes`
   (Dropout, BatchNorm folding) as before.

The front end is idempotent: a model it produced comes back unchanged apart
from names it already fixed.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import (
    IdentityEliminationPass,
    LiftConstantsToInitializersPass,
    NameFixPass,
    RemoveUnusedNodesPass,
    TopologicalSortPass,
)

from pfcompile.batching import BATCH_SYMBOL, set_dim
from pfcompile.errors import ModelError
from pfcompile.ir import infer_shapes
from pfcompile.model import check_onnx, load_onnx, value_dims

__all__ = ["MIN_OPSET", "NEVER_FOLD", "bind_input_shapes", "import_ir", "import_model"]

MIN_OPSET = 17
# Quantization nodes on constant weights are the representation; random ops are not constants.
NEVER_FOLD = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                        "RandomNormal", "RandomUniform", "RandomNormalLike",
                        "RandomUniformLike", "Multinomial", "Bernoulli"})


def _fmt(dims) -> str:
    return "x".join(str(d) for d in dims)


def bind_input_shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None,
                      batch: int | None = 1) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs have static dims (see the module docstring).

    With ``batch=None`` a dynamic dim 0 stays symbolic (named ``N``), also when
    ``input_shapes`` gives it a size. Declared
    output dims that are not static are cleared so shape inference recomputes
    them (dim 0 of each output stays ``N`` when the batch is kept free).
    """
    shapes = dict(input_shapes or {})
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name for t in m.graph.initializer}
    inputs = [vi for vi in m.graph.input if vi.name not in inits]
    names = [vi.name for vi in inputs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise ModelError(f"--input-shape names unknown input(s) {unknown}; model inputs are "
                         f"{names}")
    free_batch = False
    for vi in inputs:
        dims = value_dims(vi)
        if not vi.type.HasField("tensor_type"):
            continue
        if vi.name in shapes:
            want = shapes[vi.name]
            if len(want) != len(dims):
                raise ModelError(f"--input-shape for '{vi.name}' has rank {len(want)}, the model "
                                 f"input has rank {len(dims)} ({_fmt(dims)})")
            for w, h in zip(want, dims):
                if isinstance(h, int) and h != w:
                    raise ModelError(f"--input-shape for '{vi.name}' is {_fmt(want)} but the "
                                     f"model fixes it to {_fmt(dims)}")
            new: list[int | str] = list(want)
            if batch is None and not isinstance(dims[0], int):
                new[0] = BATCH_SYMBOL  # evaluation: the batch stays free
                free_batch = True
        else:
            dynamic = [i for i, d in enumerate(dims) if not isinstance(d, int)]
            if dynamic and dynamic != [0]:
                hint = _fmt(["1" if not isinstance(d, int) else d for d in dims])
                raise ModelError(f"input '{vi.name}' has a dynamic shape {_fmt(dims)}; pass "
                                 f"--input-shape {vi.name}:{hint} (with the size you deploy)")
            new = list(dims)
            if dynamic:
                if batch is None:
                    new[0] = BATCH_SYMBOL
                    free_batch = True
                else:
                    new[0] = int(batch)
        for d, v in zip(vi.type.tensor_type.shape.dim, new):
            set_dim(d, v)
    for vo in m.graph.output:
        if not vo.type.HasField("tensor_type") or not vo.type.tensor_type.HasField("shape"):
            continue
        for i, d in enumerate(vo.type.tensor_type.shape.dim):
            if not (d.HasField("dim_value") and d.dim_value > 0):
                d.Clear()
                if i == 0 and free_batch:
                    d.dim_param = BATCH_SYMBOL
    del m.graph.value_info[:]
    return m


def _upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    cur = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if cur is None or cur >= MIN_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception:  # noqa: BLE001 - an op the converter does not know: keep the opset
        return model


def _should_fold(node: ir.Node) -> bool | None:
    return False if node.op_type in NEVER_FOLD else None


def _run_step(name: str, where: str, fn) -> None:
    try:
        fn()
    except ModelError:
        raise
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{where}: import front end step '{name}' failed: "
                         f"{type(exc).__name__}: {msg}") from exc


def import_ir(model: str | Path | onnx.ModelProto,
              input_shapes: dict[str, tuple[int, ...]] | None = None, *,
              batch: int | None = 1) -> ir.Model:
    """Steps 1-7 of the module docstring; returns an ``onnx_ir.Model``."""
    from onnxscript.optimizer import fold_constants_ir

    if isinstance(model, (str, Path)):
        where = str(model)
        proto = load_onnx(model, check=True)
    else:
        where = "model"
        proto = model
        check_onnx(proto)
    proto = bind_input_shapes(proto, input_shapes, batch)
    proto = _upgrade_opset(proto)
    m = ir.from_proto(proto)
    _run_step("lift Constant weights", where, lambda: LiftConstantsToInitializersPass(
        lift_all_constants=True, size_limit=0)(m))
    _run_step("fold shape sub-graphs and constants", where, lambda: fold_constants_ir(
        m, onnx_shape_inference=True, should_fold=_should_fold))
    # folded values come back as Constant nodes: lift them too
    _run_step("lift folded constants", where, lambda: LiftConstantsToInitializersPass(
        lift_all_constants=True, size_limit=0)(m))
    _run_step("canonical clean-up", where, lambda: ir.passes.Sequential(
        IdentityEliminationPass(), RemoveUnusedNodesPass(), NameFixPass(),
        TopologicalSortPass())(m))
    _run_step("shape inference", where, lambda: infer_shapes(m))
    return m


def import_model(model: str | Path | onnx.ModelProto,
                 input_shapes: dict[str, tuple[int, ...]] | None = None, *,
                 batch: int | None = 1) -> onnx.ModelProto:
    """:func:`import_ir` as an ``onnx.ModelProto`` (checked)."""
    proto = ir.to_proto(import_ir(model, input_shapes, batch=batch))
    check_onnx(proto, "the imported model", hint=" (please report the model: the front end "
                                               "should keep it valid)")
    return proto
