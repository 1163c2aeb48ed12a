"""The candidate factory: a config -> the compressed model the device runs, and its kernels.

Candidates are pruned with LASSO + reconstruction on the calibration data when there is
some (else L1), then sparsified and quantized (:func:`pfcompile.search.space.compress`),
or made by a :class:`~pfcompile.search.loop.Deployer` (FPGA-style targets). Latency
predictions and sizes use the cheap L1 prune of the same config (:meth:`shaped`: the same
shapes and dtypes, ~30x cheaper). Both are cached by config hash.
"""

from __future__ import annotations

import math
from typing import Any

import onnx

from pfcompile.data import Dataset
from pfcompile.errors import PfcompileError
from pfcompile.search.graph import Kernel, extract_kernels
from pfcompile.search.sizing import SizeModel
from pfcompile.search.space import SearchSpace, compress, config_hash

__all__ = ["CandidateFactory"]


class CandidateFactory:
    """``candidate(config)`` -> (model, kernels); ``shaped(config)`` -> kernels of the
    cheap prune; ``size_mb(config)``; ``base_model()`` (the deployed baseline)."""

    def __init__(self, model: onnx.ModelProto, space: SearchSpace, *, calib: Dataset | None,
                 quant_calib: Dataset | None, calib_samples: int, deploy: Any = None,
                 sizes: SizeModel | None = None) -> None:
        self.model, self.space, self.deploy = model, space, deploy
        #: deployed-size predictions (stored weights + the code bytes measured so far)
        self.sizes = sizes if sizes is not None else SizeModel()
        self.calib, self.quant_calib, self.calib_samples = calib, quant_calib, calib_samples
        self._full: dict[str, tuple[onnx.ModelProto, list[Kernel]]] = {}
        self._shapes: dict[str, tuple[list[Kernel], float | None]] = {}

    def candidate(self, cfg: dict) -> tuple[onnx.ModelProto, list[Kernel]]:
        """The candidate model (LASSO-pruned when there is calibration data) and its kernels."""
        h = config_hash(cfg)
        if h not in self._full:
            if len(self._full) > 256:
                self._full.clear()
            if self.deploy is not None:
                cm = self.deploy.candidate(self.model, self.space, cfg, self.calib,
                                           self.calib_samples)
                self._full[h] = (cm, self.deploy.kernels(self.model, self.space, cfg))
            else:
                cm = compress(self.model, self.space, cfg, self.calib,
                              calib_samples=self.calib_samples, quant_calib=self.quant_calib)
                self._full[h] = (cm, extract_kernels(cm))
        return self._full[h]

    def _shaped(self, cfg: dict) -> tuple[list[Kernel], float | None]:
        h = config_hash(cfg)
        if h in self._full:
            return self._full[h][1], self.sizes.predict_mb(self._full[h][0])
        if h not in self._shapes:
            if len(self._shapes) > 1024:
                self._shapes.clear()
            if self.deploy is not None:   # sizes of deployed candidates: see size_mb
                self._shapes[h] = (self.deploy.kernels(self.model, self.space, cfg), None)
            else:
                cm = compress(self.model, self.space, cfg, quant_calib=self.quant_calib)
                self._shapes[h] = (extract_kernels(cm), self.sizes.predict_mb(cm))
        return self._shapes[h]

    def shaped(self, cfg: dict) -> list[Kernel]:
        """The candidate's kernels from the cheap L1 prune (same shapes and dtypes)."""
        return self._shaped(cfg)[0]

    def size_mb(self, cfg: dict) -> float:
        """The candidate's predicted deployed size in MB (inf when it cannot be made)."""
        try:
            size = self._shaped(cfg)[1]
            return size if size is not None else self.sizes.predict_mb(self.candidate(cfg)[0])
        except PfcompileError:
            return math.inf

    def base_model(self) -> onnx.ModelProto:
        """What the baseline runs: the original, or the deployed default config."""
        return self.candidate(self.space.default())[0] if self.deploy is not None else self.model

    def base_kernels(self) -> list[Kernel]:
        if self.deploy is not None:
            return self.deploy.kernels(self.model, self.space, self.space.default())
        return extract_kernels(self.model)
