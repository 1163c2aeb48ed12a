"""A VTA-like instruction stream for one accelerator layer, and its emitter.

Four instructions, as in VTA's ISA: ``LOAD`` (DRAM -> input / weight buffer on the load
module; DRAM -> accumulator on the compute module), ``GEMM`` and ``ALU`` (compute
module), ``STORE`` (store module). Each carries VTA's four dependency flags
(``pop_prev``/``pop_next``: wait for a token from the producer / consumer module;
``push_prev``/``push_next``: send one when done) and, to make the pairing checkable,
``deps``: the indices of the instructions it waits for. Regions are tiles in
un-blocked coordinates (channel ranges are multiples of the GEMM block); a tile's
data layout inside the buffer is the simulator's business.

The emitter walks the output tiles of a :class:`~pfcompile.accel.tiling.Tiling`:

    for each output tile (oc range x output-row range), in the tiling's loop order:
        LOAD acc   <- bias (broadcast)            waits for the STORE that last read the slot
        for each input-channel tile:
            LOAD inp, LOAD wgt (skipped when the tile is still resident in a slot)
                                                  wait for the GEMM that last read the slot
            GEMM                                  waits for its LOADs
        ALU requantise (MUL, ADD, SHR, ADD, MAX, MIN)
        STORE                                     waits for the ALU

With two slots per buffer (double buffering, chosen when two tiles fit) the load of the
next tile overlaps the GEMM of the current one and the store of a tile overlaps the
next tile's compute.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pfcompile.accel.config import AccelConfig
from pfcompile.accel.qgraph import QLayer

__all__ = ["MODULE_OF", "Insn", "emit_layer", "insn_from_dict", "total_uops"]

MODULE_OF = {"inp": "load", "wgt": "load", "acc": "compute"}
_ORDER = {"load": 0, "compute": 1, "store": 2}


@dataclass
class Insn:
    """One instruction (a mutable record while emitting; frozen in meaning once emitted)."""

    op: str                  # LOAD | GEMM | ALU | STORE
    module: str              # load | compute | store
    buf: str = ""            # LOAD/STORE: inp | wgt | acc
    slot: int = 0            # LOAD/STORE: buffer slot; GEMM/ALU: accumulator slot
    c0: int = 0              # channel range: inp = input channels, wgt/acc = output channels
    c1: int = 0
    k0: int = 0              # wgt: input-channel range
    k1: int = 0
    r0: int = 0              # inp: input rows (may reach into the padding); acc: output rows
    r1: int = 0
    inp_slot: int = 0        # GEMM operands
    wgt_slot: int = 0
    nbytes: int = 0          # DRAM bytes moved (LOAD/STORE)
    uops: int = 0            # GEMM: matrix-vector products; ALU: vector operations
    deps: tuple[int, ...] = ()
    pop_prev: bool = False
    pop_next: bool = False
    push_prev: bool = False
    push_next: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["deps"] = list(self.deps)
        return d


def insn_from_dict(d: dict) -> Insn:
    d = dict(d)
    d["deps"] = tuple(d.get("deps", ()))
    return Insn(**d)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def emit_layer(layer: QLayer, tiling, cfg: AccelConfig) -> list[Insn]:
    """The instruction stream of one image of ``layer`` under ``tiling``."""
    from pfcompile.accel.tiling import layer_dims

    d = layer_dims(layer, cfg)
    wbits = (cfg.operand_bits(layer.wbits, layer.abits) or (8, 8))[0]
    oc_t = tiling.oc_blocks * cfg.block_out
    ic_t = tiling.ic_blocks * cfg.block_in
    oc_tiles = [(c, min(c + oc_t, d.o_pad)) for c in range(0, d.o_pad, oc_t)]
    ic_tiles = [(c, min(c + ic_t, d.c_pad)) for c in range(0, d.c_pad, ic_t)]
    row_tiles = [(r, min(r + tiling.rows, d.oh)) for r in range(0, d.oh, tiling.rows)]
    nslots = {"inp": 2 if tiling.double_inp else 1, "wgt": 2 if tiling.double_wgt else 1,
              "acc": 2 if tiling.double_acc else 1}
    resident: dict[str, list[object]] = {b: [None] * n for b, n in nslots.items()}
    last_load: dict[str, list[int]] = {b: [-1] * n for b, n in nslots.items()}
    last_reader: dict[str, list[int]] = {b: [-1] * n for b, n in nslots.items()}
    next_slot = {b: 0 for b in nslots}
    prog: list[Insn] = []

    def add(insn: Insn) -> int:
        prog.append(insn)
        return len(prog) - 1

    def load(buf: str, key: tuple, **region) -> tuple[int, int]:
        """(slot, index of the LOAD that filled it) - reusing a resident tile if present."""
        for s, k in enumerate(resident[buf]):
            if k == key:
                return s, last_load[buf][s]
        s = next_slot[buf]
        next_slot[buf] = (s + 1) % nslots[buf]
        deps = (last_reader[buf][s],) if last_reader[buf][s] >= 0 else ()
        i = add(Insn(op="LOAD", module=MODULE_OF[buf], buf=buf, slot=s, deps=deps, **region))
        resident[buf][s] = key
        last_load[buf][s] = i
        return s, i

    if tiling.order == "oc_outer":
        tiles = [(o, r) for o in oc_tiles for r in row_tiles]
    else:
        tiles = [(o, r) for r in row_tiles for o in oc_tiles]
    for (oc0, oc1), (r0, r1) in tiles:
        rows = r1 - r0
        # accumulator slot: wait for the STORE that last drained it
        a_slot, _ = load("acc", ("acc", oc0, r0), c0=oc0, c1=oc1, r0=r0, r1=r1,
                         nbytes=(min(oc1, d.o) - oc0) * cfg.acc_bits // 8)
        resident["acc"][a_slot] = None        # an accumulator is never reused as input
        ir0 = r0 * d.sh - d.pt
        ir1 = (r1 - 1) * d.sh - d.pt + d.kh
        real_rows = max(0, min(ir1, d.h) - max(ir0, 0))
        for ic0, ic1 in ic_tiles:
            in_bytes = (ic1 - ic0) * real_rows * d.w * 8 // 8      # activations: 8-bit containers
            s_in, l_in = load("inp", ("inp", ic0, ic1, ir0, ir1), c0=ic0, c1=ic1, r0=ir0, r1=ir1,
                              nbytes=in_bytes)
            w_bytes = _ceil_div((oc1 - oc0) * (ic1 - ic0) * d.kh * d.kw * wbits, 8)
            s_w, l_w = load("wgt", ("wgt", oc0, oc1, ic0, ic1), c0=oc0, c1=oc1, k0=ic0, k1=ic1,
                            nbytes=w_bytes)
            uops = rows * d.ow * ((oc1 - oc0) // cfg.block_out) * ((ic1 - ic0) // cfg.block_in) \
                * d.kh * d.kw
            deps = tuple(sorted({x for x in (l_in, l_w) if x >= 0}))
            gemm = add(Insn(op="GEMM", module="compute", slot=a_slot, c0=oc0, c1=oc1,
                                 k0=ic0, k1=ic1, r0=r0, r1=r1, inp_slot=s_in, wgt_slot=s_w,
                                 uops=uops, deps=deps))
            last_reader["inp"][s_in] = gemm
            last_reader["wgt"][s_w] = gemm
        vectors = rows * d.ow * ((oc1 - oc0) // cfg.block_out)
        alu = add(Insn(op="ALU", module="compute", slot=a_slot, c0=oc0, c1=oc1, r0=r0, r1=r1,
                       uops=vectors * cfg.requant_alu_ops))
        st = add(Insn(op="STORE", module="store", buf="acc", slot=a_slot, c0=oc0, c1=oc1,
                      r0=r0, r1=r1, nbytes=(min(oc1, d.o) - oc0) * rows * d.ow, deps=(alu,)))
        last_reader["acc"][a_slot] = st
    _set_flags(prog)
    return prog


def _set_flags(prog: list[Insn]) -> None:
    """VTA's push/pop bits from the explicit deps (tokens between neighbouring modules)."""
    for insn in prog:
        me = _ORDER[insn.module]
        for dep in insn.deps:
            other = prog[dep]
            them = _ORDER[other.module]
            if them == me:
                continue              # same module: in-order, no token
            if them < me:
                insn.pop_prev = True
                other.push_next = True
            else:
                insn.pop_next = True
                other.push_prev = True


def total_uops(prog: list[Insn]) -> int:
    return sum(i.uops for i in prog if i.op == "GEMM")
