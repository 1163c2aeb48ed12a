"""pfcompile as an installed package (not editable), used from another directory: the
targets, the shipped records and the demo are package data; every file a command writes
goes to the cache or the output folder, never into the package. Slow: builds a wheel
and runs the CLI in fresh processes (each imports tvm)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pfcompile.paths import package_dir

ROOT = package_dir().parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(),
                       reason="needs the source checkout (pyproject.toml) to build a wheel"),
]


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_wheel_installed_elsewhere_runs_targets_compile_measure_run(tmp_path: Path) -> None:
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-w", str(wheels)], check=True, timeout=600, cwd=tmp_path)
    wheel = next(wheels.glob("pfcompile-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=600, cwd=tmp_path)
    installed = site / "pfcompile"
    assert {"targets/host.toml", "targets/fpga-vta.toml", "records/README.md",
            "records/fpga-vta/accel_tiling.jsonl", "data/demo.onnx", "_guard.py"} <= _files(installed)
    before = _files(installed)
    env = {**os.environ, "PYTHONPATH": str(site), "PFCOMPILE_CACHE": str(tmp_path / "cache")}

    def cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
        res = subprocess.run([sys.executable, "-m", "pfcompile", *args], cwd=work, env=env,
                             capture_output=True, text=True, timeout=timeout, check=False)
        assert res.returncode == 0, f"pfcompile {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
        return res

    probe = subprocess.run([sys.executable, "-c", "import pfcompile; print(pfcompile.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    assert Path(probe.stdout.strip()).parent == installed      # the wheel's copy, not the tree
    assert "fpga-vta" in cli("targets").stdout
    demo = str(installed / "data" / "demo.onnx")
    cli("compile", demo, "-o", "art")
    measured = json.loads(cli("measure", "art", "--json").stdout)
    assert measured["verified"] is True and measured["target"] == "host"
    cli("run", "--budget", "1", "--strategy", "uniform", "--max-acc-drop", "100", "-o", "dist",
        "--cache-dir", str(tmp_path / "cache"))
    assert (work / "dist" / "report.json").exists()
    again = json.loads(cli("measure", "dist", "--json").stdout)   # DIST is an artifact
    assert again["verified"] is True
    assert _files(installed) == before          # nothing written into the package
