"""The accelerator simulator: executes an instruction stream bit-exactly with integer
numpy and counts its cycles.

Functional model
----------------
SRAM buffers are slots holding numpy arrays. ``LOAD inp`` copies an input tile (8-bit
activation values, raw ``x_q``), inserting spatial padding with the input zero point
(as VTA's load unit pads on the fly) and zero channels up to the GEMM block; ``LOAD wgt``
copies an int8 weight tile (zero-padded); ``LOAD acc`` broadcasts the folded bias
``b - z_x * sum(w)`` into an int32 accumulator tile; ``GEMM`` adds the tile's
convolution, computed as KH*KW int64 matrix products of BLOCK-shaped operands, and fails
on int32 overflow; ``ALU`` requantises with the per-channel fixed-point multiplier
``m < 2**16`` and shift ``s`` (``(acc*m + 2**(s-1)) >> s``, + ``z_y``, clamp to the
output type, narrowed by a fused Relu or Clip) - the same integer arithmetic as
:func:`pfcompile.accel.reference.reference_layer`, which is what "bit-exact" is
checked against; ``STORE`` writes the tile to the DRAM output. Execution is vectorised
over the batch; cycles are per image (the program is the batch-1 program).

Cycle model
-----------
Three modules (load, compute, store) each run their queue in order, decoupled as in
VTA: an instruction starts when its module is free and every instruction in ``deps``
(its RAW/WAR dependency tokens) has finished; the modules advance concurrently
(event-driven: the ready head that can start first goes next). Costs, in cycles:

* ``LOAD``/``STORE``: ``overhead + ceil(bytes / dram_bytes_per_cycle)``; DRAM is one
  shared channel granted first-come first-served: a transfer starts after its fixed
  overhead *and* after the previous transfer of any module has left the channel (load
  and store traffic share the bandwidth; the overheads of different modules overlap).
* ``GEMM``: ``gemm_overhead + ceil(uops * cycles_per_uop)``, one uop = one
  ``1 x BLOCK_IN . BLOCK_IN x BLOCK_OUT`` product; ``cycles_per_uop = 1 / gemm_per_cycle``
  on VTA (II = 1, VTA hardware guide: "The GEMM core can perform one input-weight
  matrix multiplication per cycle") and ``ceil(w/2)*ceil(a/2)/16`` of that on the
  bit-flexible target (BitFusion's 2-bit bricks: 16 2x2 or 4 4x4 products in the time
  of one 8x8).
* ``ALU``: ``alu_overhead + vector_ops * alu_ii``; VTA's tensor ALU has an initiation
  interval of at least 2 ("since one register file tensor can be read per cycle, the
  tensor ALU has an initiation interval of at least 2", VTA hardware guide), and
  requantisation takes 6 vector ops (MUL, ADD round, SHR, ADD zero point, MAX, MIN).

Figures and their sources: the 1x16x16 GEMM shape, the 32/256/128 KB buffers and the
``HW_FREQ`` of 100 MHz are VTA's default ``vta_config.json`` (pynq); 8 bytes/cycle is
one 64-bit AXI HP beat per cycle at that clock. The per-instruction overheads (32
cycles per DMA, 4 per GEMM/ALU) are *assumptions* standing in for AXI burst set-up and
pipeline fill, not figures from a VTA publication; they are data in the target file.
The micro-op cache, instruction fetch and the host's own time are not modelled. These
are simulated cycles: no FPGA was run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pfcompile.accel.config import AccelConfig
from pfcompile.accel.isa import Insn
from pfcompile.accel.qgraph import QLayer, requant_params
from pfcompile.accel.tiling import layer_dims
from pfcompile.errors import MeasureError

__all__ = ["Timing", "execute_program", "requantize", "time_program"]


@dataclass
class Timing:
    """Cycles of one program (per image), and where they went."""

    cycles: int
    busy: dict[str, int] = field(default_factory=dict)    # module -> busy cycles
    dram_cycles: int = 0                                  # cycles the DRAM channel was busy
    dram_bytes: int = 0
    gemm_uops: int = 0
    n_insn: int = 0
    ends: list[int] = field(default_factory=list)         # finish time of every instruction


def _insn_cost(insn: Insn, cfg: AccelConfig, cpu: float) -> tuple[int, int]:
    """(fixed overhead, occupancy) cycles; occupancy is DRAM time for LOAD/STORE."""
    if insn.op in ("LOAD", "STORE"):
        ovh = cfg.store_overhead if insn.op == "STORE" else cfg.load_overhead
        return ovh, math.ceil(insn.nbytes / cfg.dram_bytes_per_cycle)
    if insn.op == "GEMM":
        return cfg.gemm_overhead, math.ceil(insn.uops * cpu - 1e-9)
    if insn.op == "ALU":
        return cfg.alu_overhead, insn.uops * cfg.alu_ii
    raise MeasureError(f"unknown instruction op '{insn.op}'")


def time_program(prog: list[Insn], layer: QLayer, cfg: AccelConfig) -> Timing:
    """Run the cycle model over ``prog`` (no data needed).

    Event-driven: each module takes the head of its own queue; of the heads whose
    dependencies have finished, the one ready first goes next (ties: program order), so
    the shared DRAM channel is granted first-come first-served across modules."""
    wbits, abits = cfg.operand_bits(layer.wbits, layer.abits) or (8, 8)
    cpu = cfg.gemm_cycles_per_uop(wbits, abits)
    queues: dict[str, list[int]] = {"load": [], "compute": [], "store": []}
    for i, insn in enumerate(prog):
        for d in insn.deps:
            if d >= i:
                raise MeasureError(f"layer '{layer.name}': instruction {i} ({insn.op}) waits "
                                   f"on a later instruction {d}: the stream would deadlock")
        queues[insn.module].append(i)
    head = {m: 0 for m in queues}
    free = {"load": 0, "compute": 0, "store": 0}
    busy = {"load": 0, "compute": 0, "store": 0}
    ends: list[int] = [-1] * len(prog)
    dram_free = 0
    dram_cycles = dram_bytes = uops = 0
    for _ in range(len(prog)):
        best: tuple[int, int, str] | None = None
        for m, q in queues.items():
            if head[m] >= len(q):
                continue
            i = q[head[m]]
            if any(ends[d] < 0 for d in prog[i].deps):
                continue
            ready = max([free[m]] + [ends[d] for d in prog[i].deps])
            if best is None or (ready, i) < best[:2]:
                best = (ready, i, m)
        if best is None:                      # cannot happen for a well-formed stream
            raise MeasureError(f"layer '{layer.name}': instruction stream deadlocks")
        start, i, m = best
        insn = prog[i]
        ovh, occ = _insn_cost(insn, cfg, cpu)
        if insn.op in ("LOAD", "STORE"):
            xfer = max(start + ovh, dram_free)
            end = xfer + occ
            dram_free = end
            dram_cycles += occ
            dram_bytes += insn.nbytes
        else:
            end = start + ovh + occ
            if insn.op == "GEMM":
                uops += insn.uops
        busy[m] += end - start
        free[m] = end
        ends[i] = end
        head[m] += 1
    return Timing(cycles=max(ends) if ends else 0, busy=busy, dram_cycles=dram_cycles,
                  dram_bytes=dram_bytes, gemm_uops=uops, n_insn=len(prog), ends=ends)


def requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, y_zero: int,
               y_dtype: str, clamp: tuple[int, int], axis: int = 1) -> np.ndarray:
    """Fixed-point requantisation of int32 accumulators (channel axis ``axis``), clamped
    to ``clamp`` (the output type, narrowed by a fused Relu / Clip)."""
    shape = [1] * acc.ndim
    shape[axis] = -1
    m = mult.reshape(shape)
    s = shift.reshape(shape)
    v = (acc.astype(np.int64) * m + (np.int64(1) << (s - 1))) >> s
    v = v + y_zero
    return np.clip(v, clamp[0], clamp[1]).astype(y_dtype)


def _gemm_tile(inp: np.ndarray, wt: np.ndarray, rows: int, ow: int, sh: int, sw: int
               ) -> np.ndarray:
    """One GEMM instruction's work: (N, C, R, W) padded input tile x (O, C, KH, KW) weight
    tile -> (N, O, rows, ow) int64. Im2col and one float64 matrix product: exact, since
    every partial sum is an integer far below 2**53 (|x| < 2**8, |w| < 2**8, C*KH*KW
    < 2**20 terms)."""
    n, c = inp.shape[:2]
    o, _, kh, kw = wt.shape
    cols = np.empty((c, kh, kw, n, rows, ow), np.float64)
    src = inp.transpose(1, 0, 2, 3)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = src[:, :, i:i + (rows - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw]
    out = wt.reshape(o, -1).astype(np.float64) @ cols.reshape(c * kh * kw, n * rows * ow)
    return np.rint(out).astype(np.int64).reshape(o, n, rows, ow).transpose(1, 0, 2, 3)


def execute_program(prog: list[Insn], layer: QLayer, cfg: AccelConfig,
                    x: np.ndarray) -> np.ndarray:
    """Execute ``prog`` on integer input ``x`` (N, C, H, W) -> integer output (N, O, OH, OW)."""
    d = layer_dims(layer, cfg)
    n = x.shape[0]
    if x.shape[1:] != tuple(layer.in_shape[1:]):
        raise MeasureError(f"layer '{layer.name}': input shape {x.shape} != {layer.in_shape}")
    w = np.zeros((d.o_pad, d.c_pad, d.kh, d.kw), np.int64)
    w[:d.o, :d.c] = layer.weight
    bias = np.zeros(d.o_pad, np.int64)
    bias[:d.o] = layer.folded_bias()
    mult = np.zeros(d.o_pad, np.int64)
    shift = np.ones(d.o_pad, np.int64)
    mult[:d.o], shift[:d.o] = requant_params(layer)
    cols0 = -d.pl
    cols1 = (d.ow - 1) * d.sw - d.pl + d.kw
    xp = x.astype(np.int64)
    y = np.zeros((n, d.o, d.oh, d.ow), layer.y_dtype)
    sram: dict[tuple[str, int], np.ndarray] = {}
    acc_dtype_max = 2 ** (cfg.acc_bits - 1)
    for insn in prog:
        if insn.op == "LOAD" and insn.buf == "inp":
            t = np.full((n, insn.c1 - insn.c0, insn.r1 - insn.r0, cols1 - cols0), layer.x_zero,
                        np.int64)
            if insn.c1 > d.c:                      # block padding channels
                t[:, max(0, d.c - insn.c0):] = 0
            rr0, rr1 = max(insn.r0, 0), min(insn.r1, d.h)
            cc0, cc1 = max(cols0, 0), min(cols1, d.w)
            ch1 = min(insn.c1, d.c)
            if rr1 > rr0 and ch1 > insn.c0:
                t[:, :ch1 - insn.c0, rr0 - insn.r0:rr1 - insn.r0, cc0 - cols0:cc1 - cols0] = \
                    xp[:, insn.c0:ch1, rr0:rr1, cc0:cc1]
            sram[("inp", insn.slot)] = t
        elif insn.op == "LOAD" and insn.buf == "wgt":
            sram[("wgt", insn.slot)] = w[insn.c0:insn.c1, insn.k0:insn.k1]
        elif insn.op == "LOAD" and insn.buf == "acc":
            sram[("acc", insn.slot)] = np.broadcast_to(
                bias[insn.c0:insn.c1][None, :, None, None],
                (n, insn.c1 - insn.c0, insn.r1 - insn.r0, d.ow)).copy()
        elif insn.op == "GEMM":
            acc = sram[("acc", insn.slot)]
            inp = sram[("inp", insn.inp_slot)]
            wt = sram[("wgt", insn.wgt_slot)]
            acc += _gemm_tile(inp, wt, insn.r1 - insn.r0, d.ow, d.sh, d.sw)
            if acc.size and (acc.max() >= acc_dtype_max or acc.min() < -acc_dtype_max):
                raise MeasureError(f"layer '{layer.name}': int{cfg.acc_bits} accumulator "
                                   f"overflow in GEMM tile oc {insn.c0}:{insn.c1} rows "
                                   f"{insn.r0}:{insn.r1}")
        elif insn.op == "ALU":
            acc = sram[("acc", insn.slot)]
            sram[("out", insn.slot)] = requantize(acc, mult[insn.c0:insn.c1],
                                                  shift[insn.c0:insn.c1], layer.y_zero,
                                                  layer.y_dtype, layer.clamp())
        elif insn.op == "STORE":
            out = sram[("out", insn.slot)]
            c1 = min(insn.c1, d.o)
            y[:, insn.c0:c1, insn.r0:insn.r1] = out[:, :c1 - insn.c0]
        else:
            raise MeasureError(f"unknown instruction {insn.op}/{insn.buf}")
    return y
