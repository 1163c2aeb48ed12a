"""FPGA-style accelerator targets (``targets/fpga-*.toml``): partition a QDQ ONNX model
into integer conv2d/dense layers for a VTA-like GEMM accelerator and host ops, tile and
emit a VTA-like instruction stream per layer, and run it in a bit-exact simulator that
counts cycles. Every accelerator latency here is *simulated*.

Modules: ``config`` (the ``[accelerator]`` table), ``qgraph`` (QDQ pattern, partition),
``tiling`` (tilings, search, records under ``<records>/<target>/``, see :mod:`pfcompile.paths`), ``isa`` (instruction
stream), ``sim`` (execution + cycle model), ``reference`` (numpy integer reference),
``program`` (compile / save / load / run), ``serve`` (TVM RPC device), ``mixed``
(per-layer bit-width QDQ models). Per-layer bit widths are searched by
:mod:`pfcompile.search` (``bits`` knobs on an accelerator target).
"""

from pfcompile.accel.config import AccelConfig, load_accel_config
from pfcompile.accel.program import AccelProgram, RunStats, compile_accel, load_program

__all__ = [
           "AccelConfig",
           "AccelProgram",
           "RunStats",
           "compile_accel",
           "load_accel_config",
           "load_program",
]
