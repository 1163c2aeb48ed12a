"""LASSO channel selection with least-squares reconstruction (He et al. 2017,
"Channel Pruning for Accelerating Very Deep Neural Networks"; PocketFlow's
ChannelPrunedLearner).

For a group, every consumer layer (Conv / Gemm / MatMul reading its channels)
is written as a sum of per-channel contributions ``Y = sum_c Z_c`` on
calibration activations. LASSO on ``beta`` in ``||Y - sum_c beta_c Z_c||^2 +
lambda |beta|_1`` (beta >= 0, the whole path computed by LARS) ranks channels
by how large a lambda they survive; the best ``keep`` survive. Then each
consumer's weights for the kept channels are refitted by ridge-regularised
least squares so the consumer's output is reproduced from the kept channels
alone. Groups are solved one after the other in graph order, each on the
features of the model pruned so far, against the original model's outputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import scipy.linalg
from threadpoolctl import threadpool_limits

from pfcompile.batching import batch_free
from pfcompile.data import Dataset
from pfcompile.errors import DataError, PassError
from pfcompile.ir import const_array, static_shape
from pfcompile.passes._rewrite import attr_int, attr_ints
from pfcompile.passes.depgraph import DepGraph, Sink
from pfcompile.passes.prune_config import PruneConfig
from pfcompile.passes.prune_criteria import l1_scores

__all__ = ["collect_activations", "lasso_select"]

_LASSO_ROWS = 512    # sampled output positions per consumer for the selection
_RECON_ROWS = 2048   # sampled output positions per consumer for the refit
_RIDGE = 1e-3        # ridge strength relative to the mean diagonal of X^T X


def _check_calib(model: ir.Model, calib: Dataset) -> dict[str, tuple[int, ...]]:
    inits = set(model.graph.initializers)
    shapes = {}
    for v in model.graph.inputs:
        if v.name in inits:
            continue
        shape = static_shape(v)
        if shape is None:
            raise DataError(f"model input '{v.name}' has no static shape; fix it before pruning")
        arr = calib.inputs.get(v.name)
        if arr is None and len(calib.inputs) == 1:
            arr = next(iter(calib.inputs.values()))
        if arr is None:
            raise DataError(f"calibration data {calib.path or ''} has no array for model input "
                            f"'{v.name}' (found {sorted(calib.inputs)})")
        if tuple(arr.shape[1:]) != tuple(shape[1:]):
            raise DataError(
                f"calibration data {calib.path or ''}: input '{v.name}' has samples of shape "
                f"{tuple(arr.shape[1:])}, the model expects {tuple(shape[1:])}")
        shapes[v.name] = shape
    return shapes


def collect_activations(model: ir.Model, names: list[str], calib: Dataset,
                        n: int) -> dict[str, np.ndarray]:
    """Run the model on ``n`` calibration samples and return the named values."""
    shapes = _check_calib(model, calib)
    proto = ir.to_proto(model)
    # the whole calibration set in one run where the graph provably allows a free batch
    # (pfcompile.batching: e.g. Paddle2ONNX's Reshape constants [1, 200] rewritten to
    # [0, 200]); else one model batch at a time. Trying the batch and catching
    # onnxruntime's error printed that error on every prune, and a Reshape [1, -1]
    # would not have failed at all but mixed the samples.
    free = batch_free(proto)
    run_proto = free if free is not None else proto
    have = {o.name for o in run_proto.graph.output}
    for name in names:
        if name not in have:
            run_proto.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    arrays = {k: (calib.inputs.get(k) if k in calib.inputs else next(iter(calib.inputs.values())))
              for k in shapes}
    total = min(n, len(next(iter(arrays.values()))))
    outs: list[list[np.ndarray]] = [[] for _ in names]
    sess = _session(run_proto)
    batch = max(1, total) if free is not None else max(1, min(s[0] for s in shapes.values()))
    for start in range(0, total - batch + 1, batch):
        feed = {k: a[start:start + batch] for k, a in arrays.items()}
        for i, r in enumerate(sess.run(names, feed)):
            outs[i].append(r)
    if not outs or not outs[0]:
        raise DataError(f"calibration data has fewer samples ({total}) than the model batch "
                        f"size ({batch})")
    return {k: np.concatenate(o).astype(np.float32) for k, o in zip(names, outs)}


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- consumers
def _conv_patches(x: np.ndarray, node: ir.Node, kshape: tuple[int, ...], rows: int,
                  rng: np.random.Generator) -> np.ndarray:
    """im2col of sampled output positions: [M, Cin, kh*kw]."""
    n, c, h, w = x.shape
    kh, kw = kshape
    s = attr_ints(node, "strides", [1, 1])
    d = attr_ints(node, "dilations", [1, 1])
    p = attr_ints(node, "pads", [0, 0, 0, 0])
    auto = node.attributes.get("auto_pad")
    if auto is not None and auto.value not in ("NOTSET", ""):
        if auto.value == "VALID":
            p = [0, 0, 0, 0]
        else:
            raise PassError(f"lasso: Conv '{node.name}' uses auto_pad={auto.value}; "
                            "canonicalise with explicit pads first")
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    oh = (h + p[0] + p[2] - d[0] * (kh - 1) - 1) // s[0] + 1
    ow = (w + p[1] + p[3] - d[1] * (kw - 1) - 1) // s[1] + 1
    total = n * oh * ow
    idx = rng.choice(total, size=min(rows, total), replace=False) if total > rows \
        else np.arange(total)
    b, rem = np.divmod(idx, oh * ow)
    yy, xx = np.divmod(rem, ow)
    ki, kj = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    rows_i = (yy * s[0])[:, None] + (ki.reshape(-1) * d[0])[None]   # [M, K]
    cols_j = (xx * s[1])[:, None] + (kj.reshape(-1) * d[1])[None]
    patches = xp[b[:, None, None], np.arange(c)[None, :, None], rows_i[:, None, :],
                 cols_j[:, None, :]]
    return patches  # [M, C, K]


def _dense_weight(sink: Sink) -> np.ndarray:
    """Consumer weight as [O, I, K] (grouped conv expanded with zeros)."""
    node = sink.node
    w = const_array(node.inputs[1]).astype(np.float32)
    if sink.kind == "conv":
        g = attr_int(node, "group", 1)
        o, ig = w.shape[:2]
        w = w.reshape(o, ig, -1)
        if g == 1:
            return w
        dense = np.zeros((o, ig * g, w.shape[2]), np.float32)
        og = o // g
        for j in range(g):
            dense[j * og:(j + 1) * og, j * ig:(j + 1) * ig] = w[j * og:(j + 1) * og]
        return dense
    if sink.kind == "gemm":  # B is [N, K]
        return w[:, :, None]
    return w.T[:, :, None]   # B is [K, N]


def _inputs_of(sink: Sink, x: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    if sink.kind == "conv":
        kshape = tuple(const_array(sink.node.inputs[1]).shape[2:])
        if len(kshape) != 2 or x.ndim != 4:
            raise PassError(f"lasso handles 2-D convolutions only ('{sink.node.name}')")
        return _conv_patches(x, sink.node, kshape, rows, rng)
    idx = rng.choice(len(x), size=min(rows, len(x)), replace=False)
    return x[idx][:, :, None]


def _path_scores(gram: np.ndarray, xy: np.ndarray, n_rows: int) -> np.ndarray:
    """For each feature: the lambda down to which it stays in the positive LASSO
    path (features surviving larger lambda matter more); -1 if never selected.
    Works on the Gram matrix, so the cost does not grow with the sample count."""
    from sklearn.linear_model import lars_path_gram

    alphas, _active, coefs = lars_path_gram(xy, gram, n_samples=n_rows, method="lasso",
                                            positive=True, max_iter=4 * len(xy))
    score = np.full(len(xy), -1.0)
    nz = coefs > 0
    for j in range(len(xy)):
        if not nz[j, -1]:
            continue
        zero_steps = np.nonzero(~nz[j])[0]
        score[j] = alphas[zero_steps[-1]] if len(zero_steps) else alphas[0]
    return score


def _sink_features(sink: Sink, x: np.ndarray, pos: np.ndarray, seed: int) -> np.ndarray:
    """Sampled consumer inputs at positions ``pos``: [M, P, K] (same rows for a seed)."""
    return _inputs_of(sink, x, _RECON_ROWS, np.random.default_rng(seed))[:, pos]


def lasso_select(dg: DepGraph, ratios: list[float], config: PruneConfig, calib: Dataset
                 ) -> tuple[list[np.ndarray], dict[tuple[ir.Node, int], np.ndarray]]:
    """Removal masks per group and reconstructed consumer weight columns.

    Groups are solved in graph order. For each, consumer inputs come from the
    model with the groups before it already pruned and reconstructed, and the
    target is the consumer's output in the original model (He et al.'s
    sequential scheme: later layers correct the error of earlier ones).
    """
    # one BLAS thread: the matrices are small and a shared 2-core machine thrashes with more
    with threadpool_limits(1):
        return _lasso_select(dg, ratios, config, calib)


def _lasso_select(dg: DepGraph, ratios: list[float], config: PruneConfig, calib: Dataset
                  ) -> tuple[list[np.ndarray], dict[tuple[ir.Node, int], np.ndarray]]:
    from pfcompile.passes.prune import _select, materialize

    todo = [gi for gi, g in enumerate(dg.groups) if g.prunable and ratios[gi] > 0]
    sinks_of = {gi: [s for s in dg.sinks if s.node.inputs[0] in dg.layouts
                     and (dg.channels_of(s.node.inputs[0], gi) >= 0).any()] for gi in todo}
    values = list({s.node.inputs[0].name: None for gi in todo for s in sinks_of[gi]})
    if not values:
        return _select(dg, ratios, l1_scores(dg), config.round_to), {}
    orig = collect_activations(dg.model, values, calib, config.calib_samples)
    sink_seed = {id(s.node): i for i, s in enumerate(dg.sinks)}
    fallback = l1_scores(dg)
    removed = [np.zeros(g.channels, dtype=bool) for g in dg.groups]
    recon: dict[tuple[ir.Node, int], np.ndarray] = {}
    for gi in todo:
        if any(m.any() for m in removed):
            pruned_model, gone = materialize(dg, removed, recon)
            cur = collect_activations(pruned_model, values, calib, config.calib_samples)
        else:
            cur, gone = orig, np.zeros(len(dg.atom_group), dtype=bool)
        nch = dg.groups[gi].channels
        gram, xy, n_rows = np.zeros((nch, nch)), np.zeros(nch), 0
        feats = []
        for sink in sinks_of[gi]:
            v = sink.node.inputs[0]
            ch = dg.channels_of(v, gi)
            pos = np.nonzero(ch >= 0)[0]
            alive = ~gone[dg.layouts[v]]
            pos_now = (np.cumsum(alive) - 1)[pos]     # where those positions sit now
            seed = sink_seed[id(sink.node)]
            w = _dense_weight(sink)[:, pos]                                   # [O, P, K]
            x_orig = _sink_features(sink, orig[v.name], pos, seed)
            x_now = _sink_features(sink, cur[v.name], pos_now, seed)          # [M, P, K]
            target = x_orig.reshape(len(x_orig), -1) @ w.reshape(w.shape[0], -1).T  # [M, O]
            feats.append((sink, ch[pos], w, x_now, target))
            xl, tl = x_now[:_LASSO_ROWS], target[:_LASSO_ROWS]
            # per-channel contribution to every output, by batched matmul: [P, M, O]
            contrib = np.matmul(xl.transpose(1, 0, 2), w.transpose(1, 2, 0))
            onehot = np.zeros((nch, len(pos)), np.float32)
            onehot[ch[pos], np.arange(len(pos))] = 1.0
            z = (onehot @ contrib.reshape(len(pos), -1)).astype(np.float64)  # [C, M*O]
            y = tl.reshape(-1).astype(np.float64)
            norm2 = float(y @ y) or 1.0
            gram += (z @ z.T) / norm2
            xy += (z @ y) / norm2
            n_rows += z.shape[1]
        # LASSO order first; L1 only breaks ties between channels LASSO never picked
        scores = [np.zeros(g.channels) for g in dg.groups]
        if n_rows == 0 or not np.isfinite(gram).all() or not gram.any():
            # no consumer LASSO can read (e.g. only ConvTranspose/Resize below): the
            # L1 criterion. sklearn's LARS loops forever on n_samples=0 or a zero Gram.
            scores[gi] = fallback[gi]
        else:
            scores[gi] = _path_scores(gram, xy, n_rows) \
                + 1e-6 * fallback[gi] / max(fallback[gi].max(), 1e-12)
        only = [r if i == gi else 0.0 for i, r in enumerate(ratios)]
        removed[gi] = _select(dg, only, scores, config.round_to)[gi]
        for sink, chs, w, x_now, target in feats:
            if sink.kind == "conv" and attr_int(sink.node, "group", 1) != 1:
                continue  # grouped consumers keep their sliced weights
            kept = ~removed[gi][chs]
            recon[(sink.node, gi)] = _refit(sink, w, x_now, target, kept)
    return removed, recon


def _refit(sink: Sink, w: np.ndarray, x: np.ndarray, target: np.ndarray,
           kept: np.ndarray) -> np.ndarray:
    """Ridge least squares (pulled towards the original weights) for the kept columns."""
    xk = x[:, kept].reshape(len(x), -1)
    w0 = w[:, kept].reshape(w.shape[0], -1).T.astype(np.float64)      # [P'K, O]
    gram = (xk.T @ xk).astype(np.float64)
    alpha = _RIDGE * max(float(np.trace(gram)) / max(len(gram), 1), 1e-12)
    rhs = (xk.T @ target).astype(np.float64) + alpha * w0
    sol = scipy.linalg.solve(gram + alpha * np.eye(len(gram)), rhs, assume_a="pos")
    cols = sol.T.reshape(w.shape[0], int(kept.sum()), w.shape[2])
    if sink.kind == "conv":
        kshape = const_array(sink.node.inputs[1]).shape[2:]
        return cols.reshape((w.shape[0], -1) + tuple(kshape))
    return cols[:, :, 0]
