"""Non-uniform weight quantization with a k-means codebook (PocketFlow's
non-uniform quantizer; Han et al., Deep Compression).

Each layer's weights are clustered (1-D k-means, linear initialisation between
min and max, Lloyd iterations) into ``2**bits`` centroids; the layer then stores
one ``bits``-bit index per weight plus the float32 centroids. In ONNX the
indices are a uint8 initializer and the weight is rebuilt by
``Gather(codebook, Cast(indices, int32))``, which onnxruntime runs and a
compiler folds to a constant.
"""

from __future__ import annotations

import numpy as np

__all__ = ["codebook_bytes", "kmeans_codebook", "uniform_bytes"]


def kmeans_codebook(w: np.ndarray, bits: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Return (centroids float32 (2**bits,), indices uint8 shaped like ``w``).

    Centroids are sorted; an empty cluster keeps its previous centroid.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"codebook bits must be in 1..8, got {bits}")
    k = 1 << bits
    flat = w.astype(np.float64).ravel()
    lo, hi = float(flat.min()), float(flat.max())
    cent = np.linspace(lo, hi, k) if hi > lo else np.full(k, lo)
    idx = np.zeros(flat.size, dtype=np.int64)
    for _ in range(iters):
        cent = np.sort(cent)
        mids = (cent[1:] + cent[:-1]) / 2
        new_idx = np.searchsorted(mids, flat)
        sums = np.bincount(new_idx, weights=flat, minlength=k)
        cnts = np.bincount(new_idx, minlength=k)
        upd = np.where(cnts > 0, sums / np.maximum(cnts, 1), cent)
        done = np.array_equal(new_idx, idx) and np.allclose(upd, cent)
        idx, cent = new_idx, upd
        if done:
            break
    return cent.astype(np.float32), idx.astype(np.uint8).reshape(w.shape)


def codebook_bytes(numel: int, bits: int) -> int:
    """Packed size: ``bits`` per index plus 2**bits float32 centroids."""
    return -(-numel * bits // 8) + (1 << bits) * 4


def uniform_bytes(numel: int, bits: int, channels: int) -> int:
    """Packed size of uniform per-channel weights: ``bits`` per weight plus a float32 scale per channel."""
    return -(-numel * bits // 8) + channels * 4
