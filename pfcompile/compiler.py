"""Compile an ONNX model for a target into a deployable library.

``compile_model`` validates the model, imports it into Relax, lowers QDQ
patterns to integer kernels when present, applies pfcompile's code generation
and exports ``DIR/model.so`` (cross-compiled for ARM targets) with
``DIR/model.json`` describing inputs, outputs, target, source hash and versions,
and ``DIR/source.onnx`` (the model as compiled, for verification on the device).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from pfcompile.errors import CompileError, ModelError, UnsupportedOpError
from pfcompile.frontend import import_model
from pfcompile.model import (
    TensorSpec,
    fix_input_shapes,
    input_specs,
    model_hash,
    output_specs,
)
from pfcompile.targets import Target, load_target

__all__ = [
    "CompiledArtifact",
    "build_executable",
    "check_supported_ops",
    "compile_model",
    "export_executable",
    "import_relax",
    "read_meta",
]


@dataclass
class CompiledArtifact:
    """A compiled model on disk: ``dir/model.so``, ``dir/model.json``, ``dir/source.onnx``."""

    dir: Path
    so_path: Path
    meta: dict = field(default_factory=dict)

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(d) for d in self.meta["inputs"]]


def check_supported_ops(model: onnx.ModelProto) -> None:
    """Raise UnsupportedOpError for the first node TVM's ONNX importer cannot convert."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = _get_convert_map()
    for i, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(node.name or f"#{i}", f"{node.domain}::{node.op_type}",
                                     "custom-domain ops are not supported by TVM's ONNX importer")
        if node.op_type not in known:
            raise UnsupportedOpError(node.name or f"#{i}", node.op_type,
                                     "TVM 0.27's ONNX importer has no converter for it")


def import_relax(model: onnx.ModelProto, specs: list[TensorSpec]):
    """ONNX → Relax IRModule with weights bound as constants."""
    from tvm.relax.frontend.onnx import from_onnx

    check_supported_ops(model)
    try:
        return from_onnx(model, shape_dict={s.name: list(s.shape) for s in specs},
                         dtype_dict={s.name: s.dtype for s in specs}, keep_params_in_input=False)
    except Exception as exc:
        raise CompileError(f"TVM could not import the model into Relax: {type(exc).__name__}: "
                           f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}") from exc


def _has_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def build_executable(mod, target: Target, *, integer: bool = False,
                     layer_names: list[str] | None = None,
                     records_dir: Path | None = None) -> tuple[object, list]:
    """Relax IRModule → (TVM executable for ``target``, per-layer reports).

    Float models go through pfcompile's code generation (:func:`pfcompile.codegen.build`:
    blocked layouts, schedule templates, tuning records from ``records_dir``).
    ``integer=True`` lowers DQ→Conv/MatMul/Gemm→Q patterns to integer kernels
    (:func:`pfcompile.quantexec.lower_qdq`) first; unmatched layers keep the float path
    and say why in the reports. Both then go through the same code generation.
    """
    from pfcompile import codegen

    reports: list = []
    try:
        if integer:
            from pfcompile.quantexec import lower_qdq, with_int8_features

            target = with_int8_features(target)
            mod, reports = lower_qdq(mod, target, layer_names)
            # integer kernels (marked ``tirx.is_scheduled``, left alone) and every float
            # leftover go through pfcompile's code generation. Measured on the demo, all 12
            # layers int8, 2 threads (tools/bench_int8_paths.py, round-robin medians):
            # codegen 0.245 ms vs TVM's integer pipeline 0.300 ms on AVX-512 VNNI, 0.258 vs
            # 0.275 ms on host-avx2. (While the kernels carried the pre-0.25 name
            # ``tir.is_scheduled``, codegen re-matched them: 0.363 ms, hence an old rule
            # that sent only mixed int8/float models this way.)
        ex = codegen.build(mod, target, records_dir=records_dir)
    except CompileError:
        raise
    except Exception as exc:
        raise CompileError(f"TVM failed to compile for target '{target.name}': "
                           f"{type(exc).__name__}: {str(exc).strip()[-400:]}") from exc
    return ex, reports


def export_executable(ex, target: Target, so_path: Path) -> None:
    """Export a library: host compiler for host targets, the target's cross compiler otherwise."""
    try:
        if target.cross_compiler:
            from tvm.support import cc

            if shutil.which(target.cross_compiler) is None:
                raise CompileError(
                    f"target '{target.name}' needs the cross compiler '{target.cross_compiler}', "
                    f"which is not on PATH (Debian: apt-get install g++-aarch64-linux-gnu)")
            ex.export_library(str(so_path), fcompile=cc.cross_compiler(target.cross_compiler))
        else:
            ex.export_library(str(so_path))
    except CompileError:
        raise
    except Exception as exc:
        raise CompileError(f"exporting {so_path} for target '{target.name}' failed: {exc}") from exc


def _versions() -> dict:
    import onnxruntime
    import tvm

    import pfcompile

    return {"pfcompile": pfcompile.__version__, "tvm": tvm.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def compile_model(model: str | Path | onnx.ModelProto, target: str | Target, out_dir: str | Path,
                  input_shapes: dict[str, tuple[int, ...]] | None = None, *,
                  integer: bool = True) -> CompiledArtifact:
    """Compile ``model`` for ``target`` into ``out_dir`` (created).

    ``input_shapes`` fixes dynamic input dims (``--input-shape``). A model file goes
    through the import front end (:mod:`pfcompile.frontend`: dims bound, a dynamic
    batch alone set to 1, Constant weights lifted, shape sub-graphs folded); an
    in-memory model (pfcompile's own output) only has its dims bound. QDQ models
    take the integer path unless ``integer=False``.
    """
    t0 = time.perf_counter()
    tgt = load_target(target) if isinstance(target, str) else target
    if isinstance(model, (str, Path)):
        source = str(model)
        proto = import_model(model, input_shapes)
        input_shapes = None
    else:
        source = "<in-memory>"
        proto = model
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as exc:
            raise ModelError(f"model fails the ONNX checker: {exc}") from exc
    specs = input_specs(proto, input_shapes)
    if input_shapes:
        proto = fix_input_shapes(proto, specs)
    outs = output_specs(proto)
    out = Path(out_dir)
    if tgt.is_accelerator:
        return _compile_accelerator(proto, tgt, out, specs, outs, source, t0)

    layer_report: list = []
    compiled = proto
    if _has_qdq(proto):
        from pfcompile.quantexec import onnx_layer_names, prepare_qdq

        # TVM cannot import blocked / float8 DequantizeLinear: such weights become float
        compiled, layer_report = prepare_qdq(proto)
    mod = import_relax(compiled, specs)
    ex, reports = build_executable(mod, tgt, integer=integer and _has_qdq(compiled),
                                   layer_names=onnx_layer_names(compiled) if _has_qdq(compiled) else None)
    layer_report += reports

    out.mkdir(parents=True, exist_ok=True)
    so_path = out / "model.so"
    export_executable(ex, tgt, so_path)
    return _write_artifact(out, so_path, proto, tgt, specs, outs, source, t0,
                           {"layers": [r.to_json() for r in layer_report]})


def _write_artifact(out: Path, lib: Path, proto: onnx.ModelProto, tgt: Target,
                    specs: list[TensorSpec], outs: list[TensorSpec], source: str, t0: float,
                    extra: dict) -> CompiledArtifact:
    """``source.onnx`` (what the device output is verified against) and ``model.json``."""
    onnx.save(proto, str(out / "source.onnx"))
    meta = {
        "inputs": [s.to_json() for s in specs],
        "outputs": [s.to_json() for s in outs],
        "target": tgt.to_json(),
        "source_model": source,
        "source_hash": model_hash(proto),
        "library": lib.name,
        **extra,
        "compile_seconds": round(time.perf_counter() - t0, 3),
        "versions": _versions(),
    }
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    return CompiledArtifact(out, lib, meta)


def _compile_accelerator(proto: onnx.ModelProto, tgt: Target, out: Path, specs: list[TensorSpec],
                         outs: list[TensorSpec], source: str, t0: float) -> CompiledArtifact:
    """FPGA-style targets: partition, tile and emit the accelerator program
    (``DIR/program.npz``; the simulator device runs it)."""
    from pfcompile.accel import compile_accel, load_accel_config
    from pfcompile.accel.tiling import TilingDB

    cfg = load_accel_config(tgt)
    prog = compile_accel(proto, cfg, records=TilingDB.for_target(cfg, None))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "program.npz"
    prog.save(path)
    return _write_artifact(out, path, proto, tgt, specs, outs, source, t0, {
        "layers": [{"node": c.layer.name, "path": "accelerator", "wbits": c.layer.wbits,
                    "abits": c.layer.abits, "cycles_simulated": c.timing.cycles}
                   for c in prog.layers]
        + [{"node": n, "path": "host", "reason": why} for n, why in prog.fallbacks.items()],
        "accel_ms_simulated": prog.accel_ms})


def read_meta(artifact_dir: str | Path) -> dict:
    p = Path(artifact_dir) / "model.json"
    if not p.exists():
        raise CompileError(f"{artifact_dir} is not a compiled artifact (no model.json); "
                           f"run `pfcompile compile` first")
    return json.loads(p.read_text())
