"""Shared fixtures: the seven pass-fixture topologies trained on 8x8 digits
(tens of seconds each on a loaded 2-core machine), exported to ONNX twice
(BatchNorm folded, and BatchNorm kept), plus calibration / validation data as
.npz files. Trained lazily per model; the exported files are kept in pytest's
cache directory under a key of (zoo.py source, model, training settings, torch
version), so later sessions reuse them until the model code changes. Each
session copies them into its own temp dir."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# CI (`.ci/run` sets CI=true) replays the same examples every run: a property test that
# finds a new failing case does so on a developer's machine, where it becomes a regression
# case, not in the CI run of an unrelated change.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

FIXTURE_MODELS = ("PlainCNN", "ResNetTiny", "MobileNetV2Tiny", "DenseNetTiny", "SENetTiny",
                  "FlattenGemmNet", "GroupedConvNet")


@dataclass(frozen=True)
class TrainedModel:
    name: str
    onnx: Path          # BatchNorm folded into Conv (the exporter's default)
    onnx_bn: Path       # BatchNormalization nodes kept
    torch_top1: float   # accuracy of the torch model on the validation split


@dataclass(frozen=True)
class DigitsData:
    calib_npz: Path     # x only (128 samples from the training split)
    val_npz: Path       # x, y (540 samples)
    x_calib: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> DigitsData:
    from pfcompile import zoo

    d = zoo.digits_splits(8)
    root = tmp_path_factory.mktemp("digits")
    np.savez(root / "calib.npz", x=d["x_calib"])
    np.savez(root / "val.npz", x=d["x_val"], y=d["y_val"])
    return DigitsData(root / "calib.npz", root / "val.npz", d["x_calib"], d["x_val"], d["y_val"])


TRAIN_SETTINGS = {"epochs": 6, "lr": 0.05, "batch": 64, "seed": 0}


def train_fixture_model(name: str, out_dir: Path) -> TrainedModel:
    """Train ``zoo.<name>`` on 8x8 digits and export both ONNX variants to ``out_dir``."""
    import torch

    from pfcompile import zoo

    torch.set_num_threads(1)  # one thread: the same weights on every run of this machine
    d = zoo.digits_splits(8)
    model = getattr(zoo, name)()
    zoo.train_classifier(model, d["x_train"], d["y_train"], **TRAIN_SETTINGS)
    top1 = zoo.accuracy(model, d["x_val"], d["y_val"])
    p = zoo.export_onnx(model, out_dir / f"{name}.onnx", (1, 1, 8, 8))
    pb = zoo.export_onnx(model, out_dir / f"{name}_bn.onnx", (1, 1, 8, 8), keep_bn=True)
    (out_dir / f"{name}.json").write_text(json.dumps({"torch_top1": top1}))
    return TrainedModel(name, p, pb, top1)


def _cache_key(name: str) -> str:
    import torch

    from pfcompile import zoo

    src = Path(zoo.__file__).read_bytes()
    blob = src + json.dumps([name, TRAIN_SETTINGS, torch.__version__, "1 thread"]).encode()
    return f"{name}-{hashlib.sha256(blob).hexdigest()[:12]}"


class _Trainer:
    def __init__(self, root: Path, persistent: Path | None) -> None:
        self.root = root
        self.persistent = persistent
        self.cache: dict[str, TrainedModel] = {}

    def __call__(self, name: str) -> TrainedModel:
        if name in self.cache:
            return self.cache[name]
        src = None
        if self.persistent is not None:
            src = self.persistent / _cache_key(name)
            if not (src / f"{name}.json").exists():
                tmp = src.with_name(f"{src.name}.{os.getpid()}.tmp")  # parallel sessions
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                train_fixture_model(name, tmp)
                if (src / f"{name}.json").exists():  # another session finished first
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    shutil.rmtree(src, ignore_errors=True)
                    tmp.rename(src)
        else:
            src = self.root / f"train-{name}"
            src.mkdir()
            train_fixture_model(name, src)
        for suffix in (".onnx", "_bn.onnx", ".json"):
            shutil.copy(src / f"{name}{suffix}", self.root / f"{name}{suffix}")
        top1 = json.loads((self.root / f"{name}.json").read_text())["torch_top1"]
        self.cache[name] = TrainedModel(name, self.root / f"{name}.onnx",
                                        self.root / f"{name}_bn.onnx", top1)
        return self.cache[name]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, request) -> _Trainer:
    """``trained("ResNetTiny")`` -> TrainedModel (trained on first use, then cached)."""
    cache = getattr(request.config, "cache", None)
    persistent = Path(cache.mkdir("pfcompile-fixture-models")) if cache is not None else None
    return _Trainer(tmp_path_factory.mktemp("fixture_models"), persistent)


def int8_host_targets() -> list[str]:
    """The host's integer paths: on x86-64 both x86 kernels (``host-avx2``: vpmaddwd,
    ``host-vnni``: vpdpbusd), whatever this CPU is; elsewhere the detected host."""
    from pfcompile.targets import host_arch

    return ["host-avx2", "host-vnni"] if host_arch() == "x86_64" else ["host"]


@pytest.fixture(params=int8_host_targets())
def int8_target(request):
    """Each integer path of this machine's architecture, skipped (with the reason) where
    this CPU lacks the instructions."""
    from pfcompile.targets import load_target

    t = load_target(request.param)
    missing = t.missing_cpu_features()
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(missing)}: {t.name} kernels cannot run here")
    return t


# --- the emulated arm64 device (codegen and real-model tests) -------------------
ARM64_DEVICE_DIR = Path(os.environ.get("PFCOMPILE_CACHE") or Path.home() / ".cache" / "pfcompile") \
    / "arm64-device"
ARM64_PORTS = range(9210, 9230)   # codegen's share of 9200-9249


def _free_port() -> int:
    for p in ARM64_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                return p
            except OSError:
                continue
    pytest.skip("no free port in 9210-9229")


@pytest.fixture(scope="module")
def arm_device():
    """An emulated arm64 rpc_server (qemu-user) for the module's tests: ``HOST:PORT``."""
    wrapper, site = ARM64_DEVICE_DIR / "root" / "usr" / "bin" / "python3", ARM64_DEVICE_DIR / "site"
    if not wrapper.exists() or not (site / "tvm").is_dir() or shutil.which("qemu-aarch64") is None:
        pytest.skip(f"emulated arm64 device not prepared in {ARM64_DEVICE_DIR}")
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("cross compiler aarch64-linux-gnu-g++ missing")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(site)
    log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([str(wrapper), "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                             "--port", str(port), "--port-end", str(port + 1)],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)   # its session workers die with it
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            log.seek(0)
            if b"bind to" in log.read():
                break
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"emulated rpc_server exited: {log.read()[-800:]!r}")
            time.sleep(2)
        time.sleep(2)
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)   # the server and the workers it forked
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
