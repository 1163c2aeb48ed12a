"""The one build module: ONNX -> Relax -> a library for a target, and the artifact on disk.

Every path from an ONNX model to something a device runs goes through here:

- :func:`import_onnx`: ONNX -> Relax IRModule (weights bound as constants);
- :func:`build`: an ONNX model -> ``(library, per-layer reports)`` for a target: float
  models through pfcompile's code generation, QDQ models with their matching layers on
  integer kernels (the rest float: a *mixed* model), FPGA-style targets as an
  accelerator program; :func:`build_relax` is the same for a Relax module;
- :func:`export`: a library -> a file: ``.so`` by the host compiler or the target's
  cross compiler (an accelerator program: ``.npz``);
- :func:`build_primfuncs`: PrimFuncs -> one library, ``k0`` .. ``kN`` (kernel timing);
- :func:`compile_model`: all of the above into an artifact folder: ``DIR/model.so``
  (or ``program.npz``), ``DIR/model.json`` (inputs, outputs, target, source hash,
  versions, per-layer report, deployment ``threads``) and ``DIR/source.onnx`` (the model
  as compiled, what the device output is verified against).
"""

from __future__ import annotations

import functools
import json
import platform
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from pfcompile.artifact_size import artifact_size
from pfcompile.deploy import deployment_threads
from pfcompile.errors import CompileError, UnsupportedOpError
from pfcompile.frontend import import_model
from pfcompile.model import (
    TensorSpec,
    check_onnx,
    fix_input_shapes,
    input_specs,
    model_hash,
    output_specs,
)
from pfcompile.storage import StorageReport, pack_weights_pass
from pfcompile.targets import Target, load_target

__all__ = [
    "CompiledArtifact",
    "build",
    "build_primfuncs",
    "build_relax",
    "check_supported_ops",
    "compile_model",
    "cross_link_options",
    "export",
    "find_lld",
    "has_qdq",
    "import_onnx",
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


def import_onnx(model: onnx.ModelProto | str | Path, specs: list[TensorSpec] | None = None):
    """ONNX (a model or a path) -> Relax IRModule with weights bound as constants.

    A path goes through the import front end (:func:`pfcompile.frontend.import_model`:
    a free batch set to 1, Constant weights lifted, shape sub-graphs folded); a model is
    imported as given. ``specs`` fixes the input shapes and dtypes (see
    :func:`pfcompile.model.input_specs`); None keeps what the model declares."""
    from tvm.relax.frontend.onnx import from_onnx

    if not isinstance(model, onnx.ModelProto):
        model = import_model(model)
    check_supported_ops(model)
    kw: dict[str, Any] = {}
    if specs is not None:
        kw = {"shape_dict": {s.name: list(s.shape) for s in specs},
              "dtype_dict": {s.name: s.dtype for s in specs}}
    try:
        return from_onnx(model, keep_params_in_input=False, **kw)
    except Exception as exc:
        raise CompileError(f"TVM could not import the model into Relax: {type(exc).__name__}: "
                           f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}") from exc


def has_qdq(model: onnx.ModelProto) -> bool:
    """True when ``model`` holds QuantizeLinear / DequantizeLinear nodes."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


#: Kernel families of pfcompile's blocked convolution templates.
CONV_FAMILIES = ("conv2d", "conv2d_1x1", "depthwise", "winograd", "dwpw")
#: convolutions per kernel of a family (a ``dwpw`` kernel is a depthwise conv and the
#: 1x1 conv that reads it, :mod:`pfcompile.codegen.templates.dwpw`)
CONVS_PER_KERNEL = {"dwpw": 2}


def _sinfo(expr: Any) -> Any:
    return getattr(expr, "struct_info", None) or expr.ty  # TVM 0.27 calls it ``ty``


def count_convs(mod: Any) -> int:
    """Number of distinct ``relax.nn.conv2d`` calls (input and weight shapes, strides,
    padding, dilation, groups) in the Relax functions of ``mod``: TVM compiles equal
    calls into one kernel, so this is what the kernels are counted against."""
    from tvm import relax

    seen: set[str] = set()

    def visit(e: Any) -> None:
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.conv2d":
            a = e.attrs
            seen.add(str((_sinfo(e.args[0]), _sinfo(e.args[1]), a.strides,
                          a.padding, a.dilation, a.groups)))

    for f in mod.functions.values():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f, visit)
    return len(seen)


def warn_off_templates(mod: Any, kernels: list, target_name: str,
                       share: float = 0.75) -> str | None:
    """Warn when most of a model's float convolutions left pfcompile's blocked templates.

    Such a build is correct (its outputs verify) but can be many times slower: a layout
    choice once sent every conv of the PP-OCR classifier to TVM's generic reduction path,
    0.40 -> 5.0 ms, with nothing said. Equal convolutions share one kernel, so distinct
    ones are counted; a fused depthwise + 1x1 kernel counts as two (``CONVS_PER_KERNEL``);
    small ones (an SE block's 1x1 conv on a 1x1 map) run as dense kernels on purpose,
    hence a share rather than all. Returns the message (None when fine)."""
    convs = count_convs(mod)
    templated = sum(CONVS_PER_KERNEL.get(f, 1) for f in (getattr(k, "family", "") for k in kernels)
                    if f in CONV_FAMILIES)
    if convs < 4 or templated >= share * convs:
        return None
    msg = (f"target '{target_name}': only {templated} of {convs} distinct convolutions run on "
           "pfcompile's blocked conv templates; the others use TVM's generic schedule and "
           "may be much slower (outputs are still verified). Please report the model.")
    warnings.warn(msg, UserWarning, stacklevel=3)
    return msg


def build_relax(mod, target: Target, *, integer: bool = False,
                layer_names: list[str] | None = None,
                records_dir: Path | None = None,
                storage: StorageReport | None = None,
                pack: bool = True) -> tuple[Any, list]:
    """Relax IRModule → (TVM executable for ``target``, per-layer reports).

    Float models go through pfcompile's code generation (:func:`pfcompile.codegen.build`:
    blocked layouts, schedule templates, tuning records from ``records_dir``).
    ``integer=True`` lowers DQ→Conv/MatMul/Gemm→Q patterns to integer kernels
    (:func:`pfcompile.quantexec.lower_qdq`) first; unmatched layers keep the float path
    and say why in the reports. Both then go through the same code generation.
    ``pack`` stores the weight constants compactly, decoded once at load
    (:func:`pfcompile.storage.pack_weights`; ``storage`` receives what it did).
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
        post = [pack_weights_pass(storage)] if pack else []
        kernels: list = []
        ex = codegen.build(mod, target, records_dir=records_dir, post_passes=post,
                           report=kernels)
        warn_off_templates(mod, kernels, target.name)
    except CompileError:
        raise
    except Exception as exc:
        raise CompileError(f"TVM failed to compile for target '{target.name}': "
                           f"{type(exc).__name__}: {str(exc).strip()[-400:]}") from exc
    return ex, reports


def build(model: onnx.ModelProto, target: Target, *, integer: bool = True,
          specs: list[TensorSpec] | None = None,
          records_dir: Path | None = None,
          storage: StorageReport | None = None, pack: bool = True) -> tuple[Any, list]:
    """An ONNX model -> ``(library, per-layer reports)`` for ``target``.

    - FPGA-style target: the accelerator program (:func:`pfcompile.accel.compile_accel`;
      tilings from the records), reports as dicts;
    - a QDQ model: made importable (:func:`pfcompile.quantexec.prepare_qdq`: blocked /
      float8 / 4-bit weights), its DQ→op→Q layers on integer kernels unless
      ``integer=False`` (then TVM's float fake-quant), the others float;
    - a float model: pfcompile's code generation.

    CPU libraries store their weight constants compactly, decoded once at load
    (``pack``; :mod:`pfcompile.storage`, ``storage`` receives what it did).
    """
    if target.is_accelerator:
        from pfcompile.accel import compile_accel, load_accel_config
        from pfcompile.accel.tiling import TilingDB

        cfg = load_accel_config(target)
        prog = compile_accel(model, cfg, records=TilingDB.for_target(cfg, records_dir))
        reports = [{"node": c.layer.name, "path": "accelerator", "wbits": c.layer.wbits,
                    "abits": c.layer.abits, "cycles_simulated": c.timing.cycles}
                   for c in prog.layers]
        reports += [{"node": n, "path": "host", "reason": why} for n, why in prog.fallbacks.items()]
        return prog, reports
    if not has_qdq(model):
        return build_relax(import_onnx(model, specs), target, records_dir=records_dir,
                           storage=storage, pack=pack)
    from pfcompile.quantexec import onnx_layer_names, prepare_qdq

    # TVM cannot import blocked / float8 DequantizeLinear: such weights become float
    prepared, folded = prepare_qdq(model)
    integer = integer and has_qdq(prepared)
    ex, layers = build_relax(import_onnx(prepared, specs), target, integer=integer,
                             layer_names=onnx_layer_names(prepared) if integer else None,
                             records_dir=records_dir, storage=storage, pack=pack)
    return ex, folded + layers


def build_primfuncs(funcs: list, target: Target):
    """PrimFuncs -> one library for ``target`` whose functions are ``k0`` .. ``kN`` (in
    order): what kernel timing uploads and times one function at a time."""
    import tvm

    mod = tvm.IRModule({f"k{i}": f.with_attr("global_symbol", f"k{i}")
                        for i, f in enumerate(funcs)})
    return tvm.compile(mod, target=target.tvm_target())


#: linker options of every exported library: drop the debug sections and the static
#: symbol table (a quarter of an int8 ResNet-20 library); the dynamic symbols the TVM
#: runtime looks up stay.
LINK_OPTIONS = ("-s",)
#: AArch64 kernels run with 4, 16 or 64 KB pages: a library keeps 64 KB-aligned segments
#: and a RELRO region that ends on a 64 KB boundary, so that it loads and is fully
#: write-protected after relocation with any of them
AARCH64_PAGE = 65536


@functools.cache
def find_lld(min_major: int = 18) -> str | None:
    """The folder of an LLVM ``ld.lld`` of at least ``min_major`` (Debian: ``apt-get install
    lld-19``: ``/usr/lib/llvm-19/bin``), or None. Version 18 is the first that pads the end
    of the RELRO region with a section that takes no file space (``.relro_padding``)."""
    import glob
    import re
    import subprocess

    cands = [str(Path(p).parent) for p in sorted(glob.glob("/usr/lib/llvm-*/bin/ld.lld"),
                                                reverse=True)]
    found = shutil.which("ld.lld")
    if found:
        cands.insert(0, str(Path(found).parent))
    for d in cands:
        try:
            out = subprocess.run([str(Path(d) / "ld.lld"), "--version"], check=False, capture_output=True,
                                 text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        m = re.search(r"LLD (\d+)\.", out)
        if m and int(m.group(1)) >= min_major:
            return d
    return None


def cross_link_options(target: Target) -> list[str]:
    """Linker options for a cross-compiled library of ``target``.

    AArch64 with GNU ld (``aarch64-linux-gnu-g++``'s default): ld aligns the end of the
    RELRO region (the GOT) to the 64 KB maximum page size *in the file*, so a library holds
    0-64 KB of zeros between its code and its data segment (measured: 33 KB of a 264 KB
    4-bit ResNet-20). ``-z norelro`` removes them with the hardening; ``-z
    common-page-size=4096`` does not; ``-z max-page-size=4096`` would, but such a library
    does not load on 64 KB-page kernels; gold pads the same way. LLVM's lld (>= 18) pads the
    RELRO end with a NOBITS section: with ``-z common-page-size=65536`` the RELRO region
    ends on a 64 KB boundary in memory at no file cost (same ResNet-20: 231 KB, RELRO kept,
    segments 64 KB-aligned). So lld is used where one is installed (:func:`find_lld`), GNU
    ld otherwise."""
    opts = list(LINK_OPTIONS)
    if target.arch == "aarch64":
        lld = find_lld()
        if lld is not None:
            opts += ["-fuse-ld=lld", f"-B{lld}/", f"-Wl,-z,max-page-size={AARCH64_PAGE}",
                     f"-Wl,-z,common-page-size={AARCH64_PAGE}"]
    return opts


def export(lib: Any, target: Target, path: str | Path) -> Path:
    """Write a library to ``path``: a TVM executable or module as a shared library, by the
    host compiler for host targets and by the target's cross compiler otherwise (checked
    to be on PATH); an accelerator program as its ``.npz``."""
    path = Path(path)
    if target.is_accelerator:
        lib.save(path)
        return path
    try:
        if target.cross_compiler:
            from tvm.support import cc

            if shutil.which(target.cross_compiler) is None:
                raise CompileError(
                    f"target '{target.name}' needs the cross compiler '{target.cross_compiler}', "
                    f"which is not on PATH (Debian: apt-get install g++-aarch64-linux-gnu)")
            lib.export_library(str(path), fcompile=cc.cross_compiler(
                target.cross_compiler, options=cross_link_options(target)))
        else:
            lib.export_library(str(path), options=list(LINK_OPTIONS))
    except CompileError:
        raise
    except Exception as exc:
        raise CompileError(f"exporting {path} for target '{target.name}' failed: {exc}") from exc
    return path


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
        check_onnx(proto)
    specs = input_specs(proto, input_shapes)
    if input_shapes:
        proto = fix_input_shapes(proto, specs)
    outs = output_specs(proto)
    out = Path(out_dir)
    storage = StorageReport()
    lib, reports = build(proto, tgt, integer=integer, specs=specs, storage=storage)
    out.mkdir(parents=True, exist_ok=True)
    path = export(lib, tgt, out / ("program.npz" if tgt.is_accelerator else "model.so"))
    extra: dict = {"layers": [r if isinstance(r, dict) else r.to_json() for r in reports]}
    if tgt.is_accelerator:
        extra["accel_ms_simulated"] = lib.accel_ms
    else:
        extra["storage"] = storage.to_json()
        # the deployment thread count: every pfcompile runner sets the pool to it
        extra["threads"] = deployment_threads(tgt)
    return _write_artifact(out, path, proto, tgt, specs, outs, source, t0, extra)


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
        "deployed": [lib.name],
        "size": artifact_size(lib).to_json(),
        **extra,
        "compile_seconds": round(time.perf_counter() - t0, 3),
        "versions": _versions(),
    }
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    return CompiledArtifact(out, lib, meta)


def read_meta(artifact_dir: str | Path) -> dict:
    p = Path(artifact_dir) / "model.json"
    if not p.exists():
        raise CompileError(f"{artifact_dir} is not a compiled artifact (no model.json); "
                           f"run `pfcompile compile` first")
    return json.loads(p.read_text())
