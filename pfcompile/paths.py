"""Where pfcompile reads and writes files, in one place.

- Package data (read only): ``pfcompile/targets/*.toml``, ``pfcompile/records/<target>/``
  (tuning records shipped with the package), ``pfcompile/data/`` (the demo).
- The cache (read and written): ``$PFCOMPILE_CACHE``, else ``~/.cache/pfcompile``:
  records a run or ``pfcompile tune`` measures (``records/<target>/``), the latency
  model, the emulated arm64 device (``arm64-device/``). Nothing is ever written into
  the installed package or the source tree.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "demo_paths", "package_dir", "records_dir", "shipped_records_dir"]


def package_dir() -> Path:
    """The installed (or checked-out) ``pfcompile`` package folder."""
    return Path(__file__).resolve().parent


def cache_dir() -> Path:
    """``$PFCOMPILE_CACHE``, else ``~/.cache/pfcompile`` (not created here)."""
    env = os.environ.get("PFCOMPILE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pfcompile"


def shipped_records_dir() -> Path:
    """Tuning records shipped with the package (read only): ``pfcompile/records/``."""
    return package_dir() / "records"


def records_dir() -> Path:
    """Where runs append the records they measure: ``<cache>/records/``."""
    return cache_dir() / "records"


def demo_paths() -> tuple[Path, Path, Path]:
    """The built-in demo: ``(model.onnx, validation .npz, calibration .npz)``."""
    d = package_dir() / "data"
    return d / "demo.onnx", d / "demo_val.npz", d / "demo_calib.npz"
