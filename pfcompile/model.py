"""Loading, validating and describing ONNX models.

Every command that takes a model goes through :func:`load_onnx`, so that a
missing file, bytes that are not ONNX, a model the checker rejects or a dynamic
input without ``--input-shape`` all fail the same clear way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from pfcompile.batching import set_dim
from pfcompile.errors import ModelError

__all__ = [
    "TensorSpec",
    "check_onnx",
    "file_hash",
    "fix_input_shapes",
    "input_specs",
    "load_onnx",
    "model_hash",
    "output_specs",
    "parse_input_shapes",
    "sample_specs",
    "value_dims",
]


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and numpy dtype name of a graph input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(d: dict) -> TensorSpec:
        return TensorSpec(d["name"], tuple(int(s) for s in d["shape"]), d["dtype"])


def load_onnx(path: str | Path, *, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX file, run the checker and shape inference.

    Raises :class:`ModelError` naming the file when it is missing, is not an
    ONNX protobuf, or fails the checker.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file not found: {p}")
    if p.is_dir():
        raise ModelError(f"model path is a directory, expected an .onnx file: {p}")
    data = p.read_bytes()
    if not data:
        raise ModelError(f"model file is empty: {p}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeWarning variants
        raise ModelError(f"{p} is not an ONNX model (protobuf parse failed: {exc})") from exc
    if len(model.graph.node) == 0 and len(model.graph.output) == 0:
        raise ModelError(f"{p} is not an ONNX model (no graph found in the file)")
    if check:
        check_onnx(model, str(p))
        try:
            model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except Exception as exc:
            raise ModelError(f"{p}: ONNX shape inference failed: {exc}") from exc
    return model


def check_onnx(model: onnx.ModelProto, where: str = "model", *, full_check: bool = False,
               hint: str = "") -> None:
    """The ONNX checker (``full_check``: with strict shape inference); a failure raises
    ModelError "``where`` fails the ONNX checker: <first line>``hint``"."""
    caught = Exception if full_check else onnx.checker.ValidationError  # + InferenceError
    try:
        onnx.checker.check_model(model, full_check=full_check)
    except caught as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ModelError(f"{where} fails the ONNX checker: {first}{hint}") from exc


def model_hash(model: onnx.ModelProto) -> str:
    """Content hash (sha256 hex, 16 chars) of a model's serialized bytes."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:16]


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _initializer_names(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer}


def value_dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    """A tensor's declared dims: sizes as ints, a symbol or ``"?"`` for the others."""
    return [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0
            else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def _value_info_spec(vi: onnx.ValueInfoProto) -> tuple[str, list[int | str], str]:
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)).name
    return vi.name, value_dims(vi), dtype


def parse_input_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``name:1x3x224x224`` strings (one per input) into a dict."""
    out: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise ModelError(f"--input-shape '{item}' must look like name:1x3x224x224")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError as exc:
            raise ModelError(f"--input-shape '{item}': dims must be integers joined by 'x'") from exc
        if any(d <= 0 for d in shape):
            raise ModelError(f"--input-shape '{item}': dims must be positive")
        out[name] = shape
    return out


def input_specs(
    model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]] | None = None
) -> list[TensorSpec]:
    """Static input specs; dynamic dims must be given in ``overrides``."""
    overrides = dict(overrides or {})
    inits = _initializer_names(model)
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        name, dims, dtype = _value_info_spec(vi)
        if name in overrides:
            shape = overrides.pop(name)
            if len(shape) != len(dims):
                raise ModelError(
                    f"--input-shape for '{name}' has rank {len(shape)}, the model input has rank "
                    f"{len(dims)} ({'x'.join(map(str, dims))})"
                )
            for want, have in zip(shape, dims):
                if isinstance(have, int) and have != want:
                    raise ModelError(
                        f"--input-shape for '{name}' is {'x'.join(map(str, shape))} but the model "
                        f"fixes it to {'x'.join(map(str, dims))}"
                    )
        else:
            if any(not isinstance(d, int) for d in dims):
                raise ModelError(
                    f"input '{name}' has a dynamic shape {'x'.join(map(str, dims))}; pass "
                    f"--input-shape {name}:" + "x".join("1" if not isinstance(d, int) else str(d) for d in dims)
                )
            shape = tuple(int(d) for d in dims)
        specs.append(TensorSpec(name, tuple(shape), dtype))
    if overrides:
        raise ModelError(
            f"--input-shape names unknown input(s) {sorted(overrides)}; model inputs are "
            f"{[s.name for s in specs]}"
        )
    return specs


def sample_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    """Input specs for loading data (only the per-sample shape is checked): a dynamic
    batch dim counts as 1; any other dynamic dim is an error naming --input-shape."""
    inits = _initializer_names(model)
    fixed = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        _, dims, _ = _value_info_spec(vi)
        if dims and not isinstance(dims[0], int) and all(isinstance(d, int) for d in dims[1:]):
            fixed[vi.name] = (1, *dims[1:])
    return input_specs(model, fixed)


def output_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    specs = []
    for vi in model.graph.output:
        name, dims, dtype = _value_info_spec(vi)
        specs.append(TensorSpec(name, tuple(d if isinstance(d, int) else -1 for d in dims), dtype))
    return specs


def fix_input_shapes(model: onnx.ModelProto, specs: list[TensorSpec]) -> onnx.ModelProto:
    """Return a copy of ``model`` whose inputs have the static shapes of ``specs``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    by_name = {s.name: s for s in specs}
    for vi in m.graph.input:
        if vi.name in by_name:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, by_name[vi.name].shape):
                set_dim(d, int(v))
    # drop stale inferred value_info and re-infer with the static shapes
    del m.graph.value_info[:]
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    except Exception as exc:
        raise ModelError(f"shape inference with static input shapes failed: {exc}") from exc
    return m
