"""RunConfig: `pfcompile run`'s inputs as one value, checked on construction, and the
CLI's flags mapped onto it (no search runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pfcompile.errors import ConfigError, SearchError
from pfcompile.paths import demo_paths
from pfcompile.search import DeviceSpec, RunConfig, SearchSettings


def test_defaults_paths_and_derived_values():
    c = RunConfig(out_dir="out", resume="out/old", data="v.npz")
    assert c.out_dir == Path("out") and c.resume == Path("out/old") and c.data == Path("v.npz")
    assert c.run_dir == Path("out/old")
    assert RunConfig().run_dir == Path("dist/run")
    assert RunConfig().do_finetune is False
    assert RunConfig(train="t.npz").do_finetune is True
    assert RunConfig(train="t.npz", finetune=False).do_finetune is False
    assert RunConfig(finetune=True).do_finetune is True
    c = RunConfig(input_shapes={"x": [1, 3, 8, 8]})
    assert c.input_shapes == {"x": (1, 3, 8, 8)}
    assert RunConfig(target="arm64") == RunConfig(target="arm64")
    assert hash(RunConfig(target="arm64")) == hash(RunConfig(target="arm64"))


def test_with_demo_fills_only_what_is_missing():
    model, val, calib = demo_paths()
    c = RunConfig().with_demo()
    assert (c.model, c.data, c.calib) == (model, val, calib)
    mine = RunConfig(data="mine.npz").with_demo()
    assert (mine.model, mine.data, mine.calib) == (model, Path("mine.npz"), calib)
    given = RunConfig(model="m.onnx")
    assert given.with_demo() is given and given.data is None


@pytest.mark.parametrize("kwargs, match", [
    ({"final_repeats": -1}, "final_repeats must be >= 0"),
    ({"finetune_epochs": -2}, "--finetune-epochs must be >= 0, got -2"),
    ({"target": ""}, "--target must be a target name"),
    ({"settings": {"budget": 2}}, "RunConfig.settings must be a pfcompile.search.SearchSettings"),
    ({"device": "127.0.0.1:9090"}, "RunConfig.device must be a pfcompile.search.DeviceSpec"),
    ({"input_shapes": {"x": (1, 0, 8)}}, "--input-shape x: dims must be positive integers"),
    ({"model": 3}, "RunConfig.model must be a path, got int 3"),
])
def test_bad_values_are_config_errors_naming_the_flag(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig(**kwargs)


def test_device_spec_checks_its_flags():
    with pytest.raises(ConfigError, match="not both"):
        DeviceSpec(rpc="127.0.0.1:9190", device="127.0.0.1:9090")
    with pytest.raises(ConfigError, match="port_range"):
        DeviceSpec(port_range=(9350, 9300))
    assert DeviceSpec(port_range=(9300, 9301)).port_range == (9300, 9301)
    with pytest.raises(ConfigError, match="--accel-latency 'fast' is not one of total, accel"):
        DeviceSpec(accel_latency="fast")


def test_accel_latency_on_a_cpu_target_is_refused_not_ignored():
    from pfcompile.targets import load_target

    spec = DeviceSpec(null=True, accel_latency="accel")
    with pytest.raises(ConfigError, match="--accel-latency accel is for accelerator targets.*'host'"):
        spec.open(load_target("host"))
    dev, server = DeviceSpec(null=True).open(load_target("host"))
    assert server is None and type(dev).__name__ == "NullDevice"


class _Called(Exception):
    pass


def test_cli_flags_become_one_run_config(monkeypatch, tmp_path):
    """`pfcompile run` builds exactly one RunConfig from its flags and passes it on."""
    from pfcompile import search
    from pfcompile.cli import app

    seen: list[RunConfig] = []

    def fake_run(config, on_event=None):
        seen.append(config)
        raise _Called

    monkeypatch.setattr(search, "run", fake_run)
    args = ["run", str(tmp_path / "m.onnx"), "-t", "arm64", "--data", "v.npz", "--calib", "c.npz",
            "--train", "t.npz", "--no-finetune", "--finetune-epochs", "3", "--budget", "5",
            "--strategy", "random", "--max-acc-drop", "2", "--seed", "4", "--bits", "8,32",
            "--rpc", "127.0.0.1:9190", "--key", "k", "--threads", "2", "-o", str(tmp_path / "d"),
            "--cache-dir", str(tmp_path / "c"), "--accel-latency", "accel",
            "--input-shape", "input:1x1x8x8", "--confirm-fraction", "0.2", "--finalists", "2"]
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, _Called), res.output
    (c,) = seen
    assert c.model == tmp_path / "m.onnx" and c.target == "arm64"
    assert (c.data, c.calib, c.train) == (Path("v.npz"), Path("c.npz"), Path("t.npz"))
    assert c.finetune is False and c.do_finetune is False and c.finetune_epochs == 3
    assert c.out_dir == tmp_path / "d" and c.cache_dir == tmp_path / "c" and c.resume is None
    assert c.input_shapes == {"input": (1, 1, 8, 8)} and c.final_repeats == 3
    assert c.device == DeviceSpec(rpc="127.0.0.1:9190", key="k", threads=2, accel_latency="accel")
    assert c.settings == SearchSettings(strategy="random", budget=5, max_acc_drop=2.0, seed=4,
                                        bits="8,32", confirm_fraction=0.2, finalists=2)


def test_cli_bad_flags_fail_before_the_search(monkeypatch):
    from pfcompile import search
    from pfcompile.cli import app

    monkeypatch.setattr(search, "run", lambda config, on_event=None: pytest.fail("ran"))
    res = CliRunner().invoke(app, ["run", "--rpc", "127.0.0.1:1", "--device", "127.0.0.1:2"])
    assert isinstance(res.exception, ConfigError) and "not both" in str(res.exception)
    res = CliRunner().invoke(app, ["run", "--budget", "0"])
    assert isinstance(res.exception, SearchError)
    assert "--budget must be at least 1" in str(res.exception)
    res = CliRunner().invoke(app, ["run", "--finetune-epochs", "-1"])
    assert isinstance(res.exception, ConfigError) and "--finetune-epochs" in str(res.exception)
