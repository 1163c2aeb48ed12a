"""The Relax → executable path: decompose, blocked layout with graph-level
propagation, legalize (pfcompile's NCHW[x]c conv), fuse, schedule every fused
PrimFunc with a template (recorded, transferred or heuristic parameters), then
TVM's default CPU lowering and ``tvm.compile``."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
from tvm import relax, tirx

from pfcompile.codegen.convt import conv_transpose_as_pointwise
from pfcompile.codegen.layout import (
    blocked_fake_quant,
    canonicalize_for_layout,
    convert_layout_pass,
    fold_constant_layout_transforms,
    fold_input_transforms,
)
from pfcompile.codegen.records import RecordDB
from pfcompile.codegen.templates import TEMPLATES, Hardware, Workload, match
from pfcompile.codegen.templates.base import params_from_dict, params_to_dict
from pfcompile.codegen.templates.dense import pack_dense_weights
from pfcompile.codegen.templates.dwpw import fuse_depthwise_pointwise
from pfcompile.codegen.templates.matmul import pad_matmul_columns
from pfcompile.codegen.templates.norm import FAST_MATH_LEGALIZE, fuse_layer_norm
from pfcompile.codegen.templates.winograd import conv2d_legalizer
from pfcompile.codegen.vmprog import shrink_vm_program_pass
from pfcompile.errors import CompileError

__all__ = [
    "KernelWorkload",
    "build",
    "build_context",
    "channel_block",
    "choose_params",
    "fuse_to_tir",
    "kernel_workloads",
    "relax_pipeline",
    "schedule_module",
    "vm_finalize_passes",
]


@dataclass(frozen=True)
class KernelWorkload:
    """One fused kernel: what it computes and how pfcompile schedules it."""

    name: str                     # the PrimFunc's global name in the module
    family: str
    key: str
    dims: dict[str, int]
    macs: int
    layout: str
    epilogue: int
    params: dict[str, Any] = field(default_factory=dict)
    source: str = "heuristic"     # record | transfer | heuristic | fallback | none
    symbol: str | None = None     # its name in the built library (``vmprog.short_kernel_names``)

    def to_json(self) -> dict:
        return {"name": self.name, "family": self.family, "key": self.key, "dims": self.dims,
                "macs": self.macs, "layout": self.layout, "epilogue": self.epilogue,
                "params": self.params, "source": self.source}


def channel_block(hw: Hardware) -> int:
    """Channel chunk for the blocked layout: one vector of fp32 (AVX2 → 8,
    AVX-512 → 16), two when vectors are short and registers many (NEON: 4 lanes ×
    32 registers → 8)."""
    lanes = hw.fp32_lanes
    return 2 * lanes if lanes < 8 and hw.vector_registers >= 32 else lanes


def fuse_to_tir(mod: tvm.IRModule, target: Any, db: RecordDB | None = None,
                winograd: int | None = None) -> tvm.IRModule:
    """Relax module → blocked layout, legalized, fused (PrimFuncs not yet scheduled).
    Each 3×3 stride-1 conv is legalized as direct or Winograd convolution, whichever
    ``db``'s records measured faster, else by the heuristic
    (:func:`pfcompile.codegen.templates.winograd.choose_algorithm`); ``winograd`` = 0 turns
    Winograd off, 2 or 4 forces that tile size on every eligible conv."""
    hw = Hardware.from_target(target)
    canonical = tvm.transform.module_pass(
        lambda m, _c: canonicalize_for_layout(fuse_layer_norm(conv_transpose_as_pointwise(m))),
        opt_level=0,
        name="pfcompile_canonicalize")
    decompose = tvm.transform.Sequential([canonical, relax.transform.DecomposeOpsForInference(),
                                          relax.transform.Normalize()])
    blocked = tvm.transform.Sequential([convert_layout_pass(channel_block(hw)),
                                        relax.transform.Normalize()])

    def pre(m: tvm.IRModule) -> tvm.IRModule:
        m = decompose(m)
        try:
            return fold_input_transforms(blocked(m))
        except Exception:  # noqa: BLE001 - a layout TVM cannot convert: plain NCHW, correct
            return m
    seq = tvm.transform.Sequential([
        relax.transform.LegalizeOps({"relax.nn.conv2d": conv2d_legalizer(hw, db, force=winograd),
                                     **FAST_MATH_LEGALIZE}),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ])
    with target.tvm_target():
        m = pad_matmul_columns(
            fold_constant_layout_transforms(blocked_fake_quant(pre(mod))), hw)
        return seq(fuse_depthwise_pointwise(pack_dense_weights(m, hw), hw))


def _clamp(params: Any, wl: Workload) -> Any:
    """Make transferred params valid for this workload (tiles no wider than the output)."""
    d = wl.d
    if hasattr(params, "ow_tile") and "ow" in d:
        params = type(params)(**{**params_to_dict(params), "ow_tile": max(1, min(params.ow_tile, d["ow"]))})
    if hasattr(params, "oc_tile") and "cout" in d:
        occ = d["cout"] // max(1, d.get("ob", 1))
        if occ % params.oc_tile:
            params = type(params)(**{**params_to_dict(params), "oc_tile": 1})
    return params


def choose_params(template: Any, wl: Workload, hw: Hardware, db: RecordDB | None):
    """(params, source): exact record, else nearest neighbour's, else the heuristic."""
    if db is not None:
        rec = db.get(wl.key)
        if rec is not None:
            return params_from_dict(template.params_type, rec.params), "record"
        rec = db.nearest(wl.family, wl.d)
        if rec is not None:
            return _clamp(params_from_dict(template.params_type, rec.params), wl), "transfer"
    return template.heuristic(wl, hw), "heuristic"


def _apply(template: Any, func: tirx.PrimFunc, wl: Workload, params: Any, hw: Hardware,
           source: str) -> tuple[tirx.PrimFunc, str]:
    try:
        return template.apply(func, wl, params, hw), source
    except Exception:  # noqa: BLE001 - a template that cannot apply falls back
        if source != "heuristic":  # recorded/transferred params that do not fit
            with contextlib.suppress(Exception):
                return template.apply(func, wl, template.heuristic(wl, hw), hw), "heuristic"
        generic = TEMPLATES[-1]
        try:
            return generic.apply(func, wl, generic.heuristic(wl, hw), hw), "fallback"
        except Exception:  # noqa: BLE001 - leave the naive PrimFunc: still correct
            return func, "none"


def schedule_module(mod: tvm.IRModule, target: Any, db: RecordDB | None = None,
                    overrides: dict[str, Any] | None = None,
                    report: list | None = None, apply: bool = True) -> tvm.IRModule:
    """Apply a template to every PrimFunc. ``overrides`` maps a PrimFunc name to
    params (used by the tuner). ``report`` receives a KernelWorkload per kernel."""
    hw = Hardware.from_target(target)
    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        if func.attrs is not None and func.attrs.get("tirx.is_scheduled", False):
            continue  # scheduled already (MetaSchedule database)
        name = gv.name_hint
        template, wl = match(func)
        if template is None:
            continue
        if overrides and name in overrides:
            params, source = overrides[name], "override"
        else:
            params, source = choose_params(template, wl, hw, db)
        if apply:
            new, source = _apply(template, func, wl, params, hw, source)
        else:
            new = func
        out[gv] = new
        if report is not None:
            report.append(KernelWorkload(name, wl.family, wl.key, wl.d, wl.macs, wl.layout,
                                         wl.epilogue, params_to_dict(params), source))
    return out


def vm_finalize_passes(tvm_target: Any) -> list:
    """TVM's CPU finalisation passes without ``KillAfterLastUse``.

    That pass writes a ``vm.builtin.null_value`` into each register after its last use: a
    third of the VM instructions of an int8 library (64 bytes each: 172 of 454 in a 4-bit
    codebook ResNet-20, 11 KB). With static shapes they free nothing: every tensor lives in
    a storage that ``StaticPlanBlockMemory`` allocated and that the function's own
    registers hold to its end (killing a tensor view or a storage register whose tensors
    live on does not release it), and the load-time decode's outputs are all returned.
    A register is released when its function returns either way."""
    from tvm.relax.backend.cpu_generic.pipeline import finalize_passes

    return [p for p in finalize_passes(tvm_target) if p.info.name != "KillAfterLastUse"]


def relax_pipeline(target: Any, db: RecordDB | None, report: list | None = None,
                   metaschedule_dir: Path | None = None, templates: bool = True,
                   winograd: int | None = None,
                   post_passes: Sequence[tvm.transform.Pass] = ()):
    """A ``relax_pipeline`` for ``tvm.compile``. ``post_passes`` run on the fused,
    scheduled module (constants final) before TVM's lowering (e.g. weight storage)."""
    from tvm.relax.backend.cpu_generic.pipeline import dataflow_lower_passes

    tvm_target = target.tvm_target()

    @tvm.transform.module_pass(opt_level=0, name="pfcompile_codegen")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = fuse_to_tir(mod, target, db, winograd)
        if metaschedule_dir is not None:
            from pfcompile.codegen.metaschedule import apply_database

            mod = apply_database(mod, metaschedule_dir, target)
        if templates:
            mod = schedule_module(mod, target, db, report=report)
        for p in post_passes:
            mod = p(mod)
        renamed: dict[str, str] = {}
        with tvm_target:
            mod = tvm.transform.Sequential(dataflow_lower_passes(tvm_target)
                                           + [relax.transform.CanonicalizeBindings()]
                                           + vm_finalize_passes(tvm_target)
                                           + [shrink_vm_program_pass(renamed)])(mod)
        if report is not None:      # the library's name of each reported kernel
            report[:] = [dataclasses.replace(r, symbol=renamed.get(r.name, r.name))
                         if isinstance(r, KernelWorkload) else r for r in report]
        return mod

    return _pipeline


#: PassContext config of every library pfcompile builds: no TIR ``AssertStmt`` in the kernels.
#: ``MakePackedAPI`` checks each argument of each kernel (type, device, ndim, dtype, every
#: dimension and stride, byte offset), each check a branch to an error call with its own
#: message: 4-5 KB of an integer conv's 9 KB, 60 % of an int8 ResNet-20 library's code
#: (tools/bench_size.py). The kernels are called only by the library's own VM code, whose
#: entry functions check the inputs against the model's shapes and dtypes
#: (``vm.builtin.check_tensor_info`` / ``match_shape``: a wrong input still raises a
#: clear error, tests/test_codesize.py), and every intermediate buffer is allocated by
#: that code for the shapes the kernels were compiled for.
BUILD_CONFIG = {"tirx.disable_assert": True}


def build_context() -> tvm.transform.PassContext:
    """The current PassContext (opt level, passes, instruments) with :data:`BUILD_CONFIG`
    added: what ``tvm.compile`` of a pfcompile library runs under."""
    cur = tvm.transform.PassContext.current()
    return tvm.transform.PassContext(
        opt_level=cur.opt_level, required_pass=list(cur.required_pass),
        disabled_pass=list(cur.disabled_pass), instruments=list(cur.instruments),
        config={**dict(cur.config), **BUILD_CONFIG})


def build(mod: tvm.IRModule, target: Any, *, records_dir: Path | None = None,
          report: list | None = None, metaschedule_dir: Path | None = None,
          templates: bool = True, winograd: int | None = None,
          post_passes: Sequence[tvm.transform.Pass] = ()):
    """Relax IRModule → TVM Executable for ``target`` with pfcompile's schedules.

    ``records_dir`` holds ``<target>/records.jsonl`` (default: the records shipped in
    ``pfcompile/records/`` plus the cache's, :mod:`pfcompile.paths`); workloads without a record use the nearest tuned neighbour
    or the analytic heuristic. ``metaschedule_dir``: apply a MetaSchedule
    database first (comparison); ``templates=False``: no pfcompile schedules;
    ``winograd``: None chooses per 3×3 stride-1 conv, 0 never, 2 or 4 that tile size;
    ``post_passes``: see :func:`relax_pipeline`."""
    if not isinstance(mod, tvm.IRModule) or not any(
            isinstance(f, relax.Function) for f in mod.functions.values()):
        raise CompileError(f"pfcompile codegen for target '{target.name}' needs a Relax IRModule "
                           "(from tvm.relax.frontend.onnx.from_onnx); got one without a Relax "
                           "function")
    db = RecordDB.for_target(records_dir, target.name)
    try:
        with build_context():
            return tvm.compile(mod, target=target.tvm_target(),
                               relax_pipeline=relax_pipeline(target, db, report,
                                                              metaschedule_dir, templates,
                                                              winograd, post_passes))
    except CompileError:
        raise
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        raise CompileError(f"pfcompile codegen failed for target '{target.name}': "
                           f"{type(exc).__name__}: {msg[-1] if msg else exc}") from exc


def kernel_workloads(mod: tvm.IRModule, target: Any, *,
                     records_dir: Path | None = None) -> list[KernelWorkload]:
    """The fused kernels of ``mod`` for ``target``: family, dims, MACs, layout and
    the template params ``build`` would use (and where they came from)."""
    db = RecordDB.for_target(records_dir, target.name)
    report: list[KernelWorkload] = []
    schedule_module(fuse_to_tir(mod, target, db), target, db, report=report, apply=False)
    return report
