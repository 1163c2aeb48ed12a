"""What ``pfcompile run`` is asked to do, as one frozen value.

:class:`RunConfig` gathers the run's inputs (model, target, data), how the search runs
(:class:`~pfcompile.search.loop.SearchSettings`), where it measures
(:class:`~pfcompile.search.device_spec.DeviceSpec`) and where it writes; the CLI builds
one from its flags and :func:`pfcompile.search.api.run` takes it. Checks that need no
file or device (types, ranges) are made on construction, so a bad value fails before
any work starts; checks that read files or the target stay in
:func:`~pfcompile.search.api.run`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pfcompile.errors import ConfigError
from pfcompile.paths import demo_paths
from pfcompile.search.device_spec import DeviceSpec
from pfcompile.search.loop import SearchSettings

__all__ = ["RunConfig"]

_PATHS = ("model", "data", "calib", "train", "out_dir", "resume", "cache_dir")


@dataclass(frozen=True)
class RunConfig:
    """``pfcompile run``'s inputs; each field names the CLI flag it comes from."""

    model: Path | None = None            # MODEL (None: the built-in demo, its data and calibration)
    target: str = "host"                 # --target: a target name or .toml
    data: Path | None = None             # --data: validation .npz (x, y); random inputs without
    calib: Path | None = None            # --calib: calibration .npz for LASSO pruning
    train: Path | None = None            # --train: fine-tuning data (turns fine-tuning on)
    settings: SearchSettings = field(default_factory=SearchSettings)   # the search's own flags
    device: DeviceSpec = field(default_factory=DeviceSpec)   # --device/--rpc/--key/--threads...
    out_dir: Path = Path("dist")         # -o DIST
    resume: Path | None = None           # --resume RUN_DIR (default run dir: DIST/run)
    cache_dir: Path | None = None        # --cache-dir (default: pfcompile.paths.cache_dir())
    final_repeats: int = 3               # rounds of the final re-measurement (0: none)
    finetune: bool | None = None         # --finetune/--no-finetune (None: on when train is given)
    finetune_epochs: int = 10            # --finetune-epochs
    finetune_drop: float = 15.0          # --finetune-drop: drops fine-tuning may win back (points)
    finetune_candidates: int = 2         # --finetune-candidates: such candidates fine-tuned at most
    # --input-shape: dynamic input dims bound (a dict: not part of the hash)
    input_shapes: Mapping[str, tuple[int, ...]] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        for name in _PATHS:   # str or PathLike in, Path out
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                try:
                    object.__setattr__(self, name, Path(value))
                except TypeError as exc:
                    raise ConfigError(f"RunConfig.{name} must be a path, got "
                                      f"{type(value).__name__} {value!r}") from exc
        if not isinstance(self.target, str) or not self.target:
            raise ConfigError(f"--target must be a target name or .toml path, got {self.target!r}")
        if not isinstance(self.settings, SearchSettings):
            raise ConfigError("RunConfig.settings must be a pfcompile.search.SearchSettings, got "
                              f"{type(self.settings).__name__}")
        if not isinstance(self.device, DeviceSpec):
            raise ConfigError("RunConfig.device must be a pfcompile.search.DeviceSpec, got "
                              f"{type(self.device).__name__}")
        if self.final_repeats < 0:
            raise ConfigError(f"final_repeats must be >= 0 (0: no final re-measurement), "
                              f"got {self.final_repeats}")
        if self.finetune_epochs < 0:
            raise ConfigError(f"--finetune-epochs must be >= 0, got {self.finetune_epochs}")
        if not self.finetune_drop >= 0:
            raise ConfigError(f"--finetune-drop must be >= 0 (points), got {self.finetune_drop}")
        if self.finetune_candidates < 0:
            raise ConfigError(f"--finetune-candidates must be >= 0, got {self.finetune_candidates}")
        if self.input_shapes is not None:
            shapes = {}
            for name, shape in dict(self.input_shapes).items():
                dims = tuple(shape)
                if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
                    raise ConfigError(f"--input-shape {name}: dims must be positive integers, "
                                      f"got {shape!r}")
                shapes[name] = dims
            object.__setattr__(self, "input_shapes", shapes)

    @property
    def run_dir(self) -> Path:
        """Where the trial log and artifacts go: ``--resume RUN_DIR``, else ``DIST/run``."""
        return self.resume if self.resume is not None else self.out_dir / "run"

    @property
    def do_finetune(self) -> bool:
        """``--finetune``/``--no-finetune`` when given, else on exactly when ``--train`` is."""
        return self.finetune if self.finetune is not None else self.train is not None

    def with_demo(self) -> RunConfig:
        """Without a model: the built-in demo, with its validation and calibration data
        where ``data`` / ``calib`` are not given; with one: this config unchanged."""
        if self.model is not None:
            return self
        model, val, calib = demo_paths()
        return replace(self, model=model, data=self.data or val, calib=self.calib or calib)
