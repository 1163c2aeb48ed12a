"""Shared pieces of the schedule templates: the hardware facts a template reads,
the workload description a template recognises, and schedule helpers.

A template is a narrow role (MetaSchedule style): ``match`` a PrimFunc to a
:class:`Workload`, give ``heuristic`` parameters from the hardware alone, list
its ``space`` for measured refinement, turn (workload, params) into
``features`` for the cost model, and ``apply`` params to a PrimFunc.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Protocol

from tvm import s_tir, tirx

__all__ = [
    "Hardware",
    "Template",
    "Workload",
    "block_iter_kinds",
    "inline_epilogue",
    "match_conv_block",
    "params_from_dict",
    "params_to_dict",
    "root_blocks",
    "schedule_injective",
    "schedule_pad_rows",
    "schedule_reduction",
    "schedule_rest",
]


@dataclass(frozen=True)
class Hardware:
    """What the analytic heuristics read from a target file's ``[hardware]``."""

    fp32_lanes: int = 8
    vector_registers: int = 16
    l1d_kb: int = 32
    l2_kb: int = 512
    cores: int = 2

    @classmethod
    def from_target(cls, target: Any) -> Hardware:
        hw = dict(getattr(target, "hardware", {}) or {})
        tvm_dict = dict(getattr(target, "tvm", {}) or {})
        cores = tvm_dict.get("num-cores", 1)
        return cls(fp32_lanes=int(hw.get("fp32_lanes", 4)),
                   vector_registers=int(hw.get("vector_registers", 16)),
                   l1d_kb=int(hw.get("l1d_kb", 32)), l2_kb=int(hw.get("l2_kb", 256)),
                   cores=int(cores) if str(cores).isdigit() else 1)


@dataclass(frozen=True)
class Workload:
    """One fused kernel as the templates see it."""

    family: str                      # conv2d | conv2d_1x1 | depthwise | group_conv | dense | ...
    dims: tuple[tuple[str, int], ...]  # sorted (name, value) pairs: shapes, strides, blocks
    macs: int
    layout: str
    epilogue: int = 0                # number of fused elementwise ops after the main block

    @property
    def d(self) -> dict[str, int]:
        return dict(self.dims)

    @property
    def key(self) -> str:
        """Stable text key used by the tuning records."""
        return self.family + ":" + ",".join(f"{k}={v}" for k, v in self.dims)

    def to_json(self) -> dict:
        return {"family": self.family, "dims": dict(self.dims), "macs": self.macs,
                "layout": self.layout, "epilogue": self.epilogue, "key": self.key}


def params_to_dict(params: Any) -> dict:
    return dataclasses.asdict(params)


def params_from_dict(cls: type, d: dict) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


class Template(Protocol):
    family: str
    params_type: type

    def match(self, func: tirx.PrimFunc) -> Workload | None: ...

    def heuristic(self, wl: Workload, hw: Hardware) -> Any: ...

    def space(self, wl: Workload, hw: Hardware) -> list[Any]: ...

    def features(self, wl: Workload, params: Any, hw: Hardware) -> list[float]: ...

    def apply(self, func: tirx.PrimFunc, wl: Workload, params: Any, hw: Hardware) -> tirx.PrimFunc: ...


# ----------------------------------------------------------------------------- helpers
def root_blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def block_iter_kinds(sch: s_tir.Schedule, block) -> list[int]:
    """0 = spatial, 2 = reduction, per block iter var."""
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def _name(sch: s_tir.Schedule, block) -> str:
    return str(sch.get(block).name_hint)


def inline_epilogue(sch: s_tir.Schedule, main_name: str):
    """Inline the elementwise blocks that follow ``main_name`` into the last one;
    returns (last epilogue block or None, number of epilogue blocks)."""
    blocks = root_blocks(sch)
    names = [_name(sch, b) for b in blocks]
    idx = names.index(main_name)
    epi = blocks[idx + 1:]
    for b in epi[:-1]:
        sch.compute_inline(b)
    return (epi[-1] if epi else None), len(epi)


def vector_chunk(ext: int | None, hw: Hardware) -> bool:
    """Whether an innermost channel chunk of ``ext`` elements is vectorized as is:
    whole vectors (a multiple of the lane count), or a power-of-two part of one
    of at least 4 fp32 (a 128/256-bit register on a 16-lane AVX-512 machine —
    still one SIMD instruction, where vectorizing another axis would gather)."""
    if ext is None or ext > 64:
        return False
    if ext % hw.fp32_lanes == 0:
        return True
    return ext >= 4 and ext < hw.fp32_lanes and ext & (ext - 1) == 0


def schedule_injective(sch: s_tir.Schedule, block, hw: Hardware) -> None:
    """Fuse all loops, vectorize by the lane count, parallel over the rest."""
    loops = sch.get_loops(block)
    if not loops:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    ext = _extent(sch, fused)
    lanes = hw.fp32_lanes
    if ext is not None and ext >= 2 * lanes and ext % lanes == 0:
        outer, inner = sch.split(fused, [None, lanes])
        sch.vectorize(inner)
        if ext // lanes >= 2 * hw.cores:
            sch.parallel(outer)
    elif ext is not None and ext >= 256:
        sch.parallel(fused)


def schedule_pad_rows(sch: s_tir.Schedule, block, hw: Hardware) -> None:
    """A padding stage computed under a conv's parallel row loop: vectorize its
    channel chunk (innermost loop) when it is a multiple of the lane count."""
    loops = sch.get_loops(block)
    ext = _extent(sch, loops[-1])
    if vector_chunk(ext, hw):
        sch.vectorize(loops[-1])


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    ext = sch.get(loop).extent
    try:
        return int(ext)
    except (TypeError, ValueError):
        return None


def schedule_reduction(sch: s_tir.Schedule, block, hw: Hardware) -> None:
    """Spatial-outer, reduction, innermost spatial vectorized when it is a short
    contiguous block (e.g. the ``c`` of NCHW8c); parallel over the outer spatial."""
    loops = sch.get_loops(block)
    kinds = block_iter_kinds(sch, block)
    if len(loops) != len(kinds):
        return
    sp = [lp for lp, k in zip(loops, kinds, strict=True) if k == 0]
    rd = [lp for lp, k in zip(loops, kinds, strict=True) if k == 2]
    if not sp or not rd:
        return
    inner = sp[-1]
    ext = _extent(sch, inner)
    vec = vector_chunk(ext, hw) and len(sp) > 1
    if len(sp) > 1 and ext is not None and ext > hw.fp32_lanes and _window_pool(sch, block, rd, ext, hw):
        return
    if vec:
        sch.reorder(*sp[:-1], *rd, inner)
        outer_sp = sp[:-1]
    else:
        sch.reorder(*sp, *rd)
        outer_sp = sp
    par = sch.fuse(*outer_sp) if len(outer_sp) > 1 else outer_sp[0]
    pext = _extent(sch, par)
    if pext is not None and pext >= hw.cores:
        sch.parallel(par)
    if vec:
        sch.vectorize(inner)
    with contextlib.suppress(Exception):  # an undecomposable init stays fused: still correct
        sch.decompose_reduction(block, rd[0])


def _window_pool(sch: s_tir.Schedule, block, rd: list, ext: int | None, hw: Hardware) -> bool:
    """A pooling window over an unblocked (NCHW) tensor: the innermost output axis (W) split
    by the lane count and vectorized under the window loops, parallel over the rest (N, C, H),
    so that each vector of outputs stays in a register over the window. Why: the plain
    reduction schedule vectorized the whole row under the window loops, 1.33 ms for ResNet-18's stem max pool
    (64 x 112^2 -> 56^2, float32, one thread on an AMD EPYC), 0.26 ms this way (the int8
    build runs that pool on NCHW float; the fp32 build's is blocked). Returns False (nothing
    changed) where it does not apply."""
    if "pool" not in _name(sch, block) or ext is None:
        return False
    lanes = next((v for v in (hw.fp32_lanes, 4) if ext % v == 0 and ext >= v), None)
    win = 1
    for lp in rd:
        win *= _extent(sch, lp) or 10**6
    if lanes is None or win > 64:
        return False
    loops = sch.get_loops(block)
    kinds = block_iter_kinds(sch, block)
    sp = [lp for lp, k in zip(loops, kinds, strict=True) if k == 0]
    wo, wi = sch.split(sp[-1], [None, lanes])
    sch.reorder(*sp[:-1], wo, *rd, wi)
    par = sch.fuse(*sp[:-1]) if len(sp) > 2 else sp[0]
    pext = _extent(sch, par)
    if pext is not None and pext >= hw.cores:
        sch.parallel(par)
    sch.vectorize(wi)
    with contextlib.suppress(Exception):  # an undecomposable init stays fused: still correct
        sch.decompose_reduction(block, rd[0])
    return True


def schedule_rest(sch: s_tir.Schedule, hw: Hardware, done: set[str]) -> None:
    """Generic schedule for every root block a template did not take."""
    for b in root_blocks(sch):
        if _name(sch, b) in done:
            continue
        if sch.get(b).annotations.get("pf_scheduled") is not None:
            continue
        kinds = block_iter_kinds(sch, b)
        # a block we cannot schedule stays as it is (naive but correct)
        with contextlib.suppress(Exception):
            if any(k == 2 for k in kinds):
                schedule_reduction(sch, b, hw)
            elif all(k == 0 for k in kinds):
                schedule_injective(sch, b, hw)


def dims_tuple(d: dict[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((k, int(v)) for k, v in d.items()))


def conv_info(sch: s_tir.Schedule, block) -> dict[str, int] | None:
    ann = sch.get(block).annotations.get("pf_conv")
    if ann is None:
        return None
    return {str(k): int(v) for k, v in dict(ann).items()}


def match_conv_block(func: tirx.PrimFunc, block: str) -> tuple[dict[str, int], int] | None:
    """(dims with ``oh``/``ow``, number of epilogue blocks after it) of the pfcompile
    conv block named ``block`` in ``func``; None when ``func`` has no such block."""
    sch = s_tir.Schedule(func)
    try:
        blk = sch.get_sblock(block)
    except Exception:  # noqa: BLE001 - no such block: not ours
        return None
    info = conv_info(sch, blk)
    if info is None:
        return None
    names = [str(sch.get(b).name_hint) for b in root_blocks(sch)]
    oh = (info["ih"] + info["pt"] + info["pb"] - (info["kh"] - 1) * info["dh"] - 1) // info["sh"] + 1
    ow = (info["iw"] + info["pl"] + info["pr"] - (info["kw"] - 1) * info["dw"] - 1) // info["sw"] + 1
    return dict(info, oh=oh, ow=ow), len(names) - names.index(block) - 1


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
