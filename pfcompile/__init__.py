"""pfcompile: compress an ONNX model and compile it for a device, measured on the device."""

from pfcompile import errors as _errors
from pfcompile.errors import *  # the error hierarchy is the package's API

__version__ = "0.1.0"

__all__ = ["__version__"]
__all__ += _errors.__all__
