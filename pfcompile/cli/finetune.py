"""``pfcompile finetune``: distillation fine-tuning of a compressed ONNX model.

A thin layer: parse, call :func:`pfcompile.finetune.finetune`, print.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pfcompile.errors import ModelError
from pfcompile.finetune.settings import FinetuneSettings

__all__ = ["finetune_cmd", "register"]

console = Console()
_D = FinetuneSettings()  # the CLI's defaults are the library's


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def finetune_cmd(
    student: Annotated[Path, typer.Argument(help="compressed (student) .onnx model")],
    data: Annotated[Path, typer.Option("--data", help="training .npz (x or one array per input; labels y optional)")],
    out: Annotated[Path, typer.Option("-o", "--out", help="where to write the fine-tuned .onnx")],
    teacher: Annotated[Path | None, typer.Option("--teacher", help="uncompressed (teacher) .onnx model")] = None,
    val: Annotated[Path | None, typer.Option("--val", help="labelled validation .npz")] = None,
    epochs: Annotated[int, typer.Option(help="training epochs")] = _D.epochs,
    alpha: Annotated[float, typer.Option(help="weight of the distillation loss (0 = labels only)")] = _D.alpha,
    temperature: Annotated[float, typer.Option(help="softmax temperature for distillation")] = _D.temperature,
    lr: Annotated[float, typer.Option(help="learning rate")] = _D.lr,
    optimizer: Annotated[str, typer.Option(help="sgd | adam")] = _D.optimizer,
    batch_size: Annotated[int, typer.Option(help="training batch size")] = _D.batch_size,
    max_grad_norm: Annotated[float, typer.Option(help="clip the gradient norm (0 = off)")] = _D.max_grad_norm,
    seed: Annotated[int, typer.Option(help="random seed (shuffling)")] = _D.seed,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the result as JSON here")] = None,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0 = torch's default)")] = 0,
    input_shape: Annotated[list[str] | None, typer.Option(
        "--input-shape", help="static shape for a dynamic input: name:1x3x224x224 "
        "(a dynamic batch alone defaults to the training batch)")] = None,
) -> None:
    """Fine-tune STUDENT with labels and the teacher's softened outputs; write OUT
    with the same graph, names and (pruned) shapes."""
    import onnx
    import torch

    from pfcompile.data import load_npz
    from pfcompile.finetune.train import EpochStats, data_specs, finetune
    from pfcompile.frontend import import_model
    from pfcompile.model import parse_input_shapes

    settings = FinetuneSettings(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                                alpha=alpha, temperature=temperature, max_grad_norm=max_grad_norm,
                                seed=seed)
    # the import front end; a dynamic batch stays free for batched training
    shapes = parse_input_shapes(input_shape)
    s_model = import_model(student, shapes, batch=None)
    t_model = import_model(teacher, shapes, batch=None) if teacher is not None else None
    specs = data_specs(s_model)
    train = load_npz(data, specs)
    val_set = load_npz(val, specs) if val is not None else None

    if threads:
        torch.set_num_threads(threads)
    with Progress(TextColumn("[bold]finetune"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task("epochs", total=epochs, info="")

        def on_epoch(st: EpochStats) -> None:
            info = f"loss {st.loss:.4f}"
            if st.ce is not None:
                info += f"  ce {st.ce:.4f}"
            if st.kd is not None:
                info += f"  kd {st.kd:.4f}"
            if st.val_top1 is not None:
                info += f"  val top-1 {_pct(st.val_top1)}"
            bar.console.print(f"epoch {st.epoch}/{epochs}  {info}  ({st.seconds:.1f} s)")
            bar.update(task, advance=1, info=info)

        result = finetune(s_model, t_model, train, val_set, settings, on_epoch=on_epoch)

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        onnx.save(result.model, str(out))
    except OSError as exc:
        raise ModelError(f"cannot write {out}: {exc}") from exc
    table = Table(title=f"fine-tune: {student.name} -> {out}")
    for col in ("teacher", "student before", "student after", "loss", "used"):
        table.add_column(col)
    used = "+".join(k for k, v in (("labels", result.used_labels), ("teacher", result.used_teacher)) if v)
    table.add_row(_pct(result.teacher_top1), _pct(result.before_top1), _pct(result.after_top1),
                  f"{result.epochs[-1].loss:.4f}" if result.epochs else "-", used)
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_json(), indent=2))


def register(app: typer.Typer) -> None:
    """Add ``finetune`` to the pfcompile CLI."""
    app.command("finetune")(finetune_cmd)
