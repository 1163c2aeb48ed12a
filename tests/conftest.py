"""Shared fixtures: the seven pass-fixture topologies trained on 8x8 digits
(tens of seconds each on a loaded 2-core machine), exported to ONNX twice
(BatchNorm folded, and BatchNorm kept), plus calibration / validation data as
.npz files. Trained lazily per model; the exported files are kept in pytest's
cache directory under a key of (zoo.py source, model, training settings, torch
version), so later sessions reuse them until the model code changes. Each
session copies them into its own temp dir."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
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

@dataclass(frozen=True)
class Demo:
    """The built-in demo model and its data, paths from the package (never the CWD)."""

    path: Path
    val_path: Path
    calib_path: Path
    model: object        # onnx.ModelProto
    val: object          # pfcompile.data.Dataset (x, y)
    calib: object        # pfcompile.data.Dataset (x)


@pytest.fixture(scope="session")
def demo() -> Demo:
    """The one demo fixture (session-wide: never modify it in place); each test takes
    the subsets it needs (``demo.val.subset(n)``)."""
    from pfcompile.data import load_npz
    from pfcompile.model import input_specs, load_onnx
    from pfcompile.paths import demo_paths

    path, val, calib = demo_paths()
    model = load_onnx(path)
    specs = input_specs(model)
    return Demo(path, val, calib, model, load_npz(val, specs), load_npz(calib, specs))


@pytest.fixture(scope="session")
def fast_settings():
    """The one small search for tests (seconds on the null device): a frozen
    ``SearchSettings`` that a test or module adapts with ``dataclasses.replace``."""
    from pfcompile.search import SearchSettings

    return SearchSettings(budget=4, batch=2, pool=6, eval_subset=64, max_acc_drop=3.0)


@pytest.fixture(scope="session")
def fast_measure():
    """The one short device measurement for tests (2 runs x 3 repeats, no minimum time,
    60 s deadline): a frozen ``MeasureSettings`` to adapt with ``dataclasses.replace``."""
    from pfcompile.targets import MeasureSettings

    return MeasureSettings(number=2, repeat=3, min_repeat_ms=0, timeout_s=60)


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
ARM64_PORTS = (9210, 9229)   # codegen's share of 9200-9249


@pytest.fixture(scope="module")
def arm_device():
    """An emulated arm64 rpc_server (qemu-user) for the module's tests: ``HOST:PORT``.

    Started by :func:`pfcompile.device.serve`, so its process group (the server and the
    workers it forks) dies with it, and with this process if pytest is killed."""
    from pfcompile.device import emulated_python, free_port, serve
    from pfcompile.errors import DeviceError
    from pfcompile.targets import load_target

    try:
        emulated_python()
    except DeviceError as exc:
        pytest.skip(str(exc))
    if shutil.which("qemu-aarch64") is None:
        pytest.skip("qemu-aarch64 missing")
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("cross compiler aarch64-linux-gnu-g++ missing")
    try:
        port = free_port("127.0.0.1", *ARM64_PORTS)
    except DeviceError:
        pytest.skip(f"no free port in {ARM64_PORTS[0]}-{ARM64_PORTS[1]}")
    server = serve(load_target("arm64"), "127.0.0.1", port)
    try:
        # one session first, with a longer deadline: the server's first worker starts
        # Python and TVM under qemu (slowest when the suite has the cores busy), so the
        # tests' own deadlines time their work, not the emulator's start
        from pfcompile.device import connect

        sess = connect(device=server.addr, timeout_s=600)
        del sess
        gc.collect()
        yield server.addr
    finally:
        server.stop()
