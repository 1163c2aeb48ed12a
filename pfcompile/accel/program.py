"""Compile a QDQ ONNX model for an FPGA-style target into an :class:`AccelProgram` (the
partition, one tiling and instruction stream per accelerator layer, the host segments),
save/load it as one ``.npz`` file, and run it.

Running: accelerator layers execute in the bit-exact simulator (cycles from the cycle
model, *simulated*); host segments run in onnxruntime on this machine's CPU and are
timed with a wall clock (*measured*, the CPU the simulator runs on; on a real board it
would be the board's ARM core compiled by TVM). The two are reported separately.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from pfcompile.accel.config import AccelConfig, load_accel_config
from pfcompile.accel.isa import Insn, emit_layer, insn_from_dict
from pfcompile.accel.qgraph import HostSegment, Partition, QLayer, partition_model
from pfcompile.accel.sim import Timing, execute_program, time_program
from pfcompile.accel.tiling import Tiling, TilingDB, search_tiling
from pfcompile.errors import DataError, ModelError
from pfcompile.reference import reference_session
from pfcompile.targets import Target

__all__ = ["AccelProgram", "CompiledLayer", "RunStats", "compile_accel", "load_program"]


@dataclass
class CompiledLayer:
    layer: QLayer
    tiling: Tiling
    insns: list[Insn]
    timing: Timing


@dataclass
class RunStats:
    """Per-image accelerator cycles (simulated) and host time (measured, this CPU)."""

    accel_cycles: int
    accel_ms: float                      # simulated
    host_ms: float                       # measured wall clock of the host segments
    batch: int
    layer_cycles: dict[str, int] = field(default_factory=dict)
    segment_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"accel_cycles": self.accel_cycles, "accel_ms_simulated": self.accel_ms,
                "host_ms_measured": self.host_ms, "batch": self.batch,
                "layer_cycles": self.layer_cycles, "segment_ms": self.segment_ms}


@dataclass
class AccelProgram:
    cfg: AccelConfig
    units: list[CompiledLayer | HostSegment]
    graph_inputs: list[str]
    graph_outputs: list[str]
    fallbacks: dict[str, str] = field(default_factory=dict)
    _sessions: dict[str, object] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ summary
    @property
    def layers(self) -> list[CompiledLayer]:
        return [u for u in self.units if isinstance(u, CompiledLayer)]

    @property
    def accel_cycles(self) -> int:
        """Simulated cycles per image of all accelerator layers (run one after another)."""
        return sum(c.timing.cycles for c in self.layers)

    @property
    def accel_ms(self) -> float:
        return self.cfg.cycles_to_ms(self.accel_cycles)

    # ------------------------------------------------------------------ running
    def _session(self, seg: HostSegment):
        if seg.name not in self._sessions:
            self._sessions[seg.name] = reference_session(seg.model, threads=1)
        return self._sessions[seg.name]

    def run(self, inputs: dict[str, np.ndarray], trace: dict[str, np.ndarray] | None = None
            ) -> tuple[dict[str, np.ndarray], RunStats]:
        """Run on a batch; returns the graph outputs and per-image stats. ``trace``, when
        given, receives every tensor computed (integer layer inputs/outputs included)."""
        missing = [n for n in self.graph_inputs if n not in inputs]
        if missing:
            raise DataError(f"accelerator program: missing input(s) {missing}; "
                            f"expects {self.graph_inputs}")
        env: dict[str, np.ndarray] = dict(inputs)
        batch = len(next(iter(inputs.values())))
        seg_ms: dict[str, float] = {}
        for u in self.units:
            if isinstance(u, HostSegment):
                sess = self._session(u)
                feed = {n: env[n] for n in u.inputs}
                t0 = time.perf_counter()
                outs = sess.run(u.outputs, feed)
                seg_ms[u.name] = (time.perf_counter() - t0) * 1e3 / batch
                env.update(zip(u.outputs, outs))
            else:
                x = env[u.layer.x]
                x4 = x.reshape((x.shape[0],) + tuple(u.layer.in_shape[1:]))
                y = execute_program(u.insns, u.layer, self.cfg, x4)
                if u.layer.kind == "dense":
                    y = y.reshape(y.shape[0], -1)
                env[u.layer.y] = y
        stats = RunStats(accel_cycles=self.accel_cycles, accel_ms=self.accel_ms,
                         host_ms=sum(seg_ms.values()), batch=batch,
                         layer_cycles={c.layer.name: c.timing.cycles for c in self.layers},
                         segment_ms=seg_ms)
        if trace is not None:
            trace.update(env)
        return {n: env[n] for n in self.graph_outputs}, stats

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """One ``.npz``: ``program.json`` (config, units, instruction streams) + arrays."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        units = []
        for i, u in enumerate(self.units):
            if isinstance(u, HostSegment):
                arrays[f"H{i}.onnx"] = np.frombuffer(u.model.SerializeToString(), np.uint8)
                units.append({"type": "host", "name": u.name, "inputs": u.inputs,
                              "outputs": u.outputs, "nodes": list(u.nodes)})
            else:
                lay = u.layer
                for k in ("weight", "bias", "w_scale"):
                    arrays[f"L{i}.{k}"] = getattr(lay, k)
                meta = {k: v for k, v in asdict(lay).items() if k not in ("weight", "bias", "w_scale")}
                units.append({"type": "layer", "layer": meta, "tiling": asdict(u.tiling),
                              "insns": [x.to_dict() for x in u.insns]})
        doc = {"format": "pfcompile.accel/1", "config": asdict(self.cfg), "units": units,
               "graph_inputs": self.graph_inputs, "graph_outputs": self.graph_outputs,
               "fallbacks": self.fallbacks}
        arrays["program.json"] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez(f, **arrays)
        return path


def load_program(path: str | Path | bytes) -> AccelProgram:
    """Read a program written by :meth:`AccelProgram.save` (a path or the file's bytes)."""
    src = io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else Path(path)
    try:
        z = np.load(src, allow_pickle=False)
        doc = json.loads(bytes(z["program.json"]).decode())
    except Exception as exc:
        raise ModelError(f"{path if not isinstance(path, bytes) else '<bytes>'} is not an "
                         f"accelerator program file: {exc}") from exc
    if doc.get("format") != "pfcompile.accel/1":
        raise ModelError(f"unknown accelerator program format {doc.get('format')!r}")
    c = dict(doc["config"])
    c["weight_bits"] = tuple(c["weight_bits"])
    c["act_bits"] = tuple(c["act_bits"])
    cfg = AccelConfig(**c)
    units: list[CompiledLayer | HostSegment] = []
    for i, u in enumerate(doc["units"]):
        if u["type"] == "host":
            m = onnx.load_model_from_string(bytes(z[f"H{i}.onnx"]))
            units.append(HostSegment(u["name"], m, u["inputs"], u["outputs"], tuple(u["nodes"])))
        else:
            meta = dict(u["layer"])
            for k in ("stride", "pads", "in_shape", "out_shape", "nodes"):
                meta[k] = tuple(meta[k])
            meta["clip"] = tuple(meta["clip"]) if meta.get("clip") else None
            lay = QLayer(weight=z[f"L{i}.weight"], bias=z[f"L{i}.bias"],
                         w_scale=z[f"L{i}.w_scale"], **meta)
            insns = [insn_from_dict(d) for d in u["insns"]]
            units.append(CompiledLayer(lay, Tiling(**u["tiling"]), insns,
                                       time_program(insns, lay, cfg)))
    return AccelProgram(cfg, units, doc["graph_inputs"], doc["graph_outputs"],
                        doc.get("fallbacks", {}))


def compile_accel(model: str | Path | onnx.ModelProto, target: str | Target | AccelConfig,
                  *, records: TilingDB | str | Path | None = None,
                  search: bool = True) -> AccelProgram:
    """Partition a QDQ model, tile and emit every accelerator layer.

    ``records``: a TilingDB (or its path) read first and appended to; None keeps the
    search in memory. ``search=False`` uses the smallest fitting tile when no record
    exists (fast, slow code)."""
    from pfcompile.model import load_onnx

    cfg = load_accel_config(target)
    m = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
    part: Partition = partition_model(m, cfg)
    db = records if isinstance(records, TilingDB) or records is None else TilingDB(records)
    units: list[CompiledLayer | HostSegment] = []
    for u in part.units:
        if isinstance(u, HostSegment):
            units.append(u)
            continue
        if search:
            tiling, _ = search_tiling(u, cfg, db)
        else:
            from pfcompile.accel.tiling import candidates

            tiling = (db.lookup(cfg, u) if db else None) or candidates(u, cfg)[0]
        insns = emit_layer(u, tiling, cfg)
        units.append(CompiledLayer(u, tiling, insns, time_program(insns, u, cfg)))
    return AccelProgram(cfg, units, part.graph_inputs, part.graph_outputs, part.fallbacks)
