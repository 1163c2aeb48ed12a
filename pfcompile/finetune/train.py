"""Knowledge-distillation fine-tuning of a compressed student against its teacher.

Loss per batch (Hinton et al. 2015; PocketFlow's ``--enbl_dst``)::

    (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

With no teacher the loss is plain cross-entropy (``alpha`` is ignored); with no
labels it is the distillation term alone. The teacher runs once, in
onnxruntime, over the training set (no augmentation), so training costs one
student forward and backward per batch.

Before/after accuracies are measured with onnxruntime on the ONNX graphs (the
student as given and the exported result), not on the torch module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

from pfcompile.data import Dataset
from pfcompile.errors import DataError, ModelError
from pfcompile.finetune.convert import onnx_to_torch
from pfcompile.finetune.export import export_onnx
from pfcompile.finetune.settings import FinetuneSettings
from pfcompile.model import TensorSpec, input_specs, load_onnx
from pfcompile.reference import reference_session

__all__ = [
    "EpochStats",
    "FinetuneResult",
    "FinetuneSettings",
    "finetune",
    "kd_loss",
    "onnx_logits",
    "onnx_top1",
]


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    ce: float | None
    kd: float | None
    val_top1: float | None
    seconds: float


@dataclass(frozen=True)
class FinetuneResult:
    """The fine-tuned model and what it gained. Accuracies are top-1 on the
    validation set with onnxruntime; ``None`` when no validation data was given."""

    model: onnx.ModelProto = field(repr=False)
    before_top1: float | None
    after_top1: float | None
    teacher_top1: float | None
    epochs: tuple[EpochStats, ...]
    settings: FinetuneSettings
    used_teacher: bool
    used_labels: bool
    seconds: float
    # the tensor trained as logits when the output is a Softmax's (logits_view), else None
    logits: str | None = None

    def to_json(self) -> dict:
        """Everything but the model, for a report."""
        return {
            "before_top1": self.before_top1,
            "after_top1": self.after_top1,
            "teacher_top1": self.teacher_top1,
            "epochs": [asdict(e) for e in self.epochs],
            "settings": asdict(self.settings),
            "used_teacher": self.used_teacher,
            "used_labels": self.used_labels,
            "seconds": self.seconds,
            "logits": self.logits,
        }


def _as_model(m: onnx.ModelProto | str | Path, what: str) -> onnx.ModelProto:
    if isinstance(m, onnx.ModelProto):
        return m
    if isinstance(m, (str, Path)):
        return load_onnx(m)
    raise ModelError(f"{what} must be an ONNX ModelProto or a path, got {type(m).__name__}")


def logits_view(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of ``model`` whose first output is the input of the ``Softmax`` that makes
    it (the logits), or None when the output is not a Softmax's (read by nothing else).

    Classifiers exported for inference often end in a Softmax (PP-OCR's direction
    classifier does); cross-entropy and distillation on its probabilities, taken as if
    they were logits, have gradients that vanish as the model grows confident. The
    initializers keep their names, so weights trained on the view are written back into
    the original graph (:func:`pfcompile.finetune.export.export_onnx`)."""
    out = model.graph.output[0].name
    node = next((n for n in model.graph.node if out in n.output), None)
    if node is None or node.op_type != "Softmax":
        return None
    if any(out in n.input for n in model.graph.node):
        return None
    view = onnx.ModelProto()
    view.CopyFrom(model)
    g = view.graph
    keep = [n for n in g.node if n.output[0] != node.output[0]]
    del g.node[:]
    g.node.extend(keep)
    logits = onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None)
    g.output[0].CopyFrom(logits)
    return view


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    # the reference session: a QDQ student (fake-quant, sub-8-bit Clip after Q included) runs
    # as written, so validation scores it as `pfcompile evaluate` and the search do
    return reference_session(model)


def _feeds_for(model: onnx.ModelProto, data: Dataset, what: str) -> tuple[list[str], list[np.ndarray]]:
    inits = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in inits]
    if len(names) == 1 and len(data.inputs) == 1:
        return names, [next(iter(data.inputs.values()))]
    missing = [n for n in names if n not in data.inputs]
    if missing:
        raise ModelError(f"{what} inputs {missing} are not in the data (it has {sorted(data.inputs)})")
    return names, [data.inputs[n] for n in names]


def data_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    """Input specs to load fine-tuning data with (``load_npz(path, data_specs(model))``):
    a dynamic batch dim counts as 1 (only the per-sample shape is checked); any
    other dynamic dim is an error."""
    inits = {t.name for t in model.graph.initializer}
    fixed = {}
    for v in model.graph.input:
        dims = v.type.tensor_type.shape.dim
        if v.name in inits or not dims or dims[0].HasField("dim_value"):
            continue
        if all(d.HasField("dim_value") for d in dims[1:]):
            fixed[v.name] = (1, *(int(d.dim_value) for d in dims[1:]))
    return input_specs(model, fixed)


def onnx_logits(model: onnx.ModelProto, data: Dataset, what: str = "model",
                batch: int = 256) -> np.ndarray:
    """First output of ``model`` over all of ``data`` with onnxruntime; a graph
    with a fixed batch dim runs in chunks of that size."""
    names, arrays = _feeds_for(model, data, what)
    dim0 = next(v for v in model.graph.input if v.name == names[0]).type.tensor_type.shape.dim
    fixed = int(dim0[0].dim_value) if dim0 and dim0[0].HasField("dim_value") else 0
    step = fixed or batch
    n = len(arrays[0])
    if fixed and n % fixed:
        raise DataError(f"{what} has a fixed batch of {fixed}; {n} samples is not a multiple")
    sess = _session(model)
    outs = []
    for i in range(0, n, step):
        outs.append(sess.run(None, {k: a[i:i + step] for k, a in zip(names, arrays)})[0])
    return np.concatenate(outs)


def onnx_top1(model: onnx.ModelProto, data: Dataset, what: str = "model") -> float:
    """Top-1 accuracy of ``model`` on labelled ``data`` with onnxruntime."""
    if data.labels is None:
        raise DataError(f"{data.path or 'data'} has no labels 'y'; top-1 needs them")
    logits = onnx_logits(model, data, what)
    return float((logits.reshape(len(logits), -1).argmax(1) == data.labels).mean())


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, mean over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def _torch_top1(module, x: list[torch.Tensor], y: np.ndarray, batch: int = 256) -> float:
    module.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(y), batch):
            out = module(*[a[i:i + batch] for a in x])
            out = out[0] if isinstance(out, tuple) else out
            preds.append(out.reshape(out.shape[0], -1).argmax(1).numpy())
    return float((np.concatenate(preds) == y).mean())


def finetune(student: onnx.ModelProto | str | Path,
             teacher: onnx.ModelProto | str | Path | None,
             train: Dataset,
             val: Dataset | None = None,
             settings: FinetuneSettings | None = None,
             on_epoch: Callable[[EpochStats], None] | None = None) -> FinetuneResult:
    """Fine-tune ``student`` on ``train`` (labels and/or the teacher's outputs) and
    return the trained graph, structurally identical to ``student``
    (``settings=None`` means ``FinetuneSettings()``).

    Raises :class:`DataError` when there is nothing to learn from (no labels and
    no teacher) and :class:`ModelError` when teacher and student outputs differ
    in shape.
    """
    t0 = time.perf_counter()
    settings = settings if settings is not None else FinetuneSettings()
    s_model = _as_model(student, "student")
    t_model = _as_model(teacher, "teacher") if teacher is not None else None
    use_teacher = t_model is not None and (settings.alpha > 0 or train.labels is None)
    use_labels = train.labels is not None and (not use_teacher or settings.alpha < 1)
    if t_model is None and train.labels is None:
        raise DataError(f"training data {train.path or ''} has no labels 'y' and no teacher was "
                        "given: nothing to learn from (add labels or pass a teacher)")
    if val is not None and val.labels is None:
        raise DataError(f"validation data {val.path or ''} has no labels 'y'; it is needed for accuracy")

    # train on the logits when both graphs end in a Softmax (see logits_view)
    s_view = logits_view(s_model)
    t_view = logits_view(t_model) if t_model is not None else None
    if s_view is not None and (t_model is None or t_view is not None):
        s_train, t_train = s_view, t_view
    else:
        s_train, t_train = s_model, t_model
    module = onnx_to_torch(s_train)
    _, s_arrays = _feeds_for(s_model, train, "student")
    x_train = [torch.from_numpy(np.ascontiguousarray(a)) for a in s_arrays]
    n = len(x_train[0])
    with torch.no_grad():
        probe = module(*[a[:2] for a in x_train])
    probe = probe[0] if isinstance(probe, tuple) else probe
    if probe.dim() != 2:
        raise ModelError(f"student output '{module.output_names[0]}' has shape {tuple(probe.shape)}; "
                         "fine-tuning needs (batch, classes) logits")
    classes = probe.shape[1]

    t_logits = None
    if use_teacher:
        tl = onnx_logits(t_train, train, "teacher")
        if tl.shape[1:] != tuple(probe.shape[1:]):
            t_out = t_model.graph.output[0].name
            raise ModelError(
                f"teacher output '{t_out}' has shape (N, {', '.join(map(str, tl.shape[1:]))}) but student "
                f"output '{module.output_names[0]}' has (N, {', '.join(map(str, probe.shape[1:]))}); "
                "distillation needs the same outputs")
        t_logits = torch.from_numpy(tl.astype(np.float32))
    y_train = None
    if use_labels:
        if train.labels.min() < 0 or train.labels.max() >= classes:
            raise DataError(f"labels in {train.path or 'training data'} span "
                            f"[{train.labels.min()}, {train.labels.max()}] but the student has {classes} classes")
        y_train = torch.from_numpy(train.labels.astype(np.int64))

    x_val = y_val = None
    before = teacher_top1 = None
    if val is not None:
        before = onnx_top1(s_model, val, "student")
        if t_model is not None:
            teacher_top1 = onnx_top1(t_model, val, "teacher")
        _, v_arrays = _feeds_for(s_model, val, "student")
        x_val = [torch.from_numpy(np.ascontiguousarray(a)) for a in v_arrays]
        y_val = val.labels

    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    params = [p for p in module.parameters() if p.requires_grad]
    if settings.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=settings.lr, momentum=0.9, nesterov=True,
                              weight_decay=settings.weight_decay)
    steps = max(1, settings.epochs * ((n + settings.batch_size - 1) // settings.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    a = settings.alpha if (use_teacher and use_labels) else (1.0 if use_teacher else 0.0)

    history: list[EpochStats] = []
    for epoch in range(settings.epochs):
        te = time.perf_counter()
        module.train()
        perm = torch.randperm(n, generator=gen)
        sums = {"loss": 0.0, "ce": 0.0, "kd": 0.0}
        for i in range(0, n, settings.batch_size):
            b = perm[i:i + settings.batch_size]
            out = module(*[x[b] for x in x_train])
            out = out[0] if isinstance(out, tuple) else out
            loss = torch.zeros(())
            if y_train is not None:
                ce = F.cross_entropy(out, y_train[b])
                loss = loss + (1 - a) * ce
                sums["ce"] += float(ce.detach()) * len(b)
            if t_logits is not None:
                kd = kd_loss(out, t_logits[b], settings.temperature)
                loss = loss + a * kd
                sums["kd"] += float(kd.detach()) * len(b)
            opt.zero_grad()
            loss.backward()
            if settings.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            opt.step()
            sched.step()
            sums["loss"] += float(loss.detach()) * len(b)
        vacc = _torch_top1(module, x_val, y_val) if x_val is not None else None
        st = EpochStats(epoch + 1, sums["loss"] / n, sums["ce"] / n if y_train is not None else None,
                        sums["kd"] / n if t_logits is not None else None, vacc, time.perf_counter() - te)
        history.append(st)
        if on_epoch is not None:
            on_epoch(st)

    module.eval()
    out_model = export_onnx(module, s_model)
    after = onnx_top1(out_model, val, "fine-tuned student") if val is not None else None
    return FinetuneResult(out_model, before, after, teacher_top1, tuple(history), settings,
                          t_logits is not None, y_train is not None, time.perf_counter() - t0,
                          s_train.graph.output[0].name if s_train is not s_model else None)
