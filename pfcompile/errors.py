"""One error hierarchy for pfcompile.

Every message names what failed (file, node, op, device) and says what to do.
"""

from __future__ import annotations

__all__ = [
    "CompileError",
    "ConfigError",
    "DataError",
    "DeviceError",
    "MeasureError",
    "ModelError",
    "PassError",
    "PfcompileError",
    "SearchError",
    "UnsupportedOpError",
]


class PfcompileError(Exception):
    """Base class of every error pfcompile raises on purpose."""


class ModelError(PfcompileError):
    """The input model is missing, malformed or not valid ONNX."""


class UnsupportedOpError(ModelError):
    """A node uses an op that pfcompile (or TVM's importer) cannot handle."""

    def __init__(self, node: str, op_type: str, detail: str = "") -> None:
        self.node = node
        self.op_type = op_type
        msg = f"unsupported op: node '{node}' has op_type '{op_type}'"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class DataError(PfcompileError):
    """Input data (.npz) is missing or does not match the model."""


class ConfigError(PfcompileError):
    """A target file, pass config or command-line setting is invalid."""


class PassError(PfcompileError):
    """A compression pass could not be applied."""


class CompileError(PfcompileError):
    """TVM could not compile the model for the target."""


class DeviceError(PfcompileError):
    """A device (RPC server, tracker, emulator) is unreachable or failed."""


class MeasureError(PfcompileError):
    """A measurement failed (wrong output, NaN, timeout)."""


class SearchError(PfcompileError):
    """The compression search could not proceed."""
