"""pfcompile: compress an ONNX model and compile it for a device, measured on the device."""

from pfcompile.errors import (
    CompileError,
    ConfigError,
    DataError,
    DeviceError,
    MeasureError,
    ModelError,
    PassError,
    PfcompileError,
    SearchError,
    UnsupportedOpError,
)

__version__ = "0.1.0"

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
    "__version__",
]
