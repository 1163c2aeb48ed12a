"""Selection under noise on the NULL device: a tiny validation set refuses candidates
whose interval is wider than the budget and says why; finalists are confirmed on data
the search never saw; resume keeps the split."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from pfcompile.data import load_npz
from pfcompile.errors import SearchError
from pfcompile.model import input_specs
from pfcompile.paths import demo_paths
from pfcompile.search.confirm import confirm_finalists, split_for_confirmation
from pfcompile.search.devices import NullDevice
from pfcompile.search.evaluation import Evaluator
from pfcompile.search.judge import AccuracyJudge
from pfcompile.search.loop import SearchSettings, TrialLog, run_search
from pfcompile.search.space import build_space, compress
from pfcompile.targets import load_target


def _app() -> typer.Typer:
    from pfcompile.cli.run import register

    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


def test_tiny_validation_set_refuses_wide_intervals_and_says_why(tmp_path, demo):
    """30 images (21 searched, 9 confirmation): at 90 % no candidate can be shown within a
    1-point budget, so every candidate is refused, and the report and CLI say why."""
    d = demo.val
    tiny = tmp_path / "tiny.npz"
    np.savez(tiny, x=d.inputs["input"][:30], y=d.labels[:30])
    out = tmp_path / "dist"
    res = CliRunner().invoke(_app(), [
        "run", "--null-device", "--data", str(tiny), "--budget", "2", "--max-acc-drop", "1",
        "--strategy", "uniform", "-o", str(out), "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    trials = [t for t in TrialLog(out / "run" / "trials.jsonl").read() if t["type"] == "trial"]
    assert len(trials) == 2
    for t in trials:
        assert t["status"] == "ok" and t["acc_n"] == 21
        assert t["acc_verdict"] == "too_wide" and t["feasible"] is False
        assert "interval too wide" in t["acc_refused"] and "images are needed" in t["acc_refused"]
    assert rep["best"] is None and rep["refused"] == {**rep["refused"], "too_wide": 2}
    assert rep["accuracy"]["search_n"] == 21 and rep["accuracy"]["confirm_n"] == 9
    assert rep["accuracy"]["images_needed"] > 90
    assert "accuracy interval is wider than the budget" in rep["why_no_candidate"]
    assert "nothing deployed" in res.output and "interval" in res.output
    page = (out / "report.html").read_text()
    assert "Nothing deployed." in page and "interval too wide" in page


def test_progress_shows_the_refusal():
    from pfcompile.cli.run import _Progress

    prog = _Progress(3, Console(file=io.StringIO(), width=300))
    reason = "interval too wide: on 21 search images even a candidate ..."
    prog("trial", {"id": 0, "status": "ok", "latency_ms": 0.5, "feasible": False,
                   "acc_verdict": "too_wide", "acc_refused": reason})
    prog("trial", {"id": 1, "status": "ok", "latency_ms": 0.4, "feasible": False,
                   "acc_verdict": "over_budget", "acc_refused": "90% upper bound 2.1 > 1"})
    assert prog.refused == {"too_wide": 1, "over_budget": 1} and prog.refusal == reason
    con = Console(file=io.StringIO(), width=300)
    con.print(prog._table())
    text = con.file.getvalue()
    assert "interval too wide" in text and "1 over budget" in text


def test_only_a_confirmed_finalist_is_chosen(tmp_path, demo):
    """Finalists are re-scored on the confirmation part in order; a heavily pruned one
    that fails there is passed over for the next, which qualifies."""
    m, d = demo.model, demo.val
    host = load_target("host")
    _, confirm = split_for_confirmation(d, 0.3, seed=0)
    space = build_space(m, host.hardware)
    bad = compress(m, space, space.uniform(0.25))          # L1, no reconstruction: ~chance
    models = {"bad": bad, "good": m}
    judge = AccuracyJudge(Evaluator(m, confirm), 1.0, 0.9, "confirmation")
    log = TrialLog(tmp_path / "trials.jsonl")
    fin = [{"id": 0, "config": "bad", "acc_drop": 0.1, "model_hash": "a"},
           {"id": 1, "config": "good", "acc_drop": 0.0, "model_hash": "b"}]
    best, recs = confirm_finalists(fin, models.get, judge, log, [], lambda k, i: None)
    assert best["id"] == 1 and best["confirmation"]["confirmed"] is True
    assert [r["confirmed"] for r in recs] == [False, True]
    assert recs[0]["acc_verdict"] == "over_budget" and recs[0]["acc_n"] == len(confirm)
    assert recs[1]["acc_drop"] == 0.0 and recs[1]["acc_drop_upper"] <= 1.0
    assert [r["type"] for r in log.read()] == ["confirm", "confirm"]


def test_search_with_confirmation_logs_it_and_resume_keeps_the_split(tmp_path, demo):
    m, d = demo.model, demo.val
    host = load_target("host")
    search, confirm = split_for_confirmation(d, 0.3, seed=0)
    calib = load_npz(demo_paths()[2], input_specs(m)).subset(32)   # LASSO: accurate candidates
    settings = SearchSettings(strategy="uniform", budget=3, max_acc_drop=2.0, eval_subset=64)
    r = run_search(m, host, NullDevice(), search, tmp_path / "run", settings, confirm=confirm,
                   calib=calib)
    log = TrialLog(tmp_path / "run" / "trials.jsonl").read()
    split = next(x for x in log if x["type"] == "split")
    assert (split["search_n"], split["confirm_n"]) == (378, 162)
    assert r.confirm_judge.n == 162 and all(t["acc_n"] == 378 for t in r.trials)
    assert r.confirmation and len(r.confirmation) <= 3
    # the first confirmed finalist, in the search's order (here the fastest two lose 1-2
    # points on the confirmation part and the slowest, lightest prune is confirmed)
    assert r.best is not None and r.best["confirmation"]["confirmed"] is True
    assert r.best["id"] == r.confirmation[-1]["trial"]
    assert all(not x["confirmed"] for x in r.confirmation[:-1])
    assert [x["trial"] for x in r.confirmation] == [t["id"] for t in r.finalists][:len(r.confirmation)]
    n_confirm = sum(x["type"] == "confirm" for x in log)
    again = run_search(m, host, NullDevice(), search, tmp_path / "run", settings, confirm=confirm,
                       calib=calib)
    assert (again.best or {}).get("id") == (r.best or {}).get("id")
    log2 = TrialLog(tmp_path / "run" / "trials.jsonl").read()
    assert sum(x["type"] == "confirm" for x in log2) == n_confirm   # reused, not re-scored
    other_s, other_c = split_for_confirmation(d, 0.3, seed=1)
    with pytest.raises(SearchError, match="split"):
        run_search(m, host, NullDevice(), other_s, tmp_path / "run", settings, confirm=other_c)
    with pytest.raises(SearchError, match="--confidence"):
        run_search(m, host, NullDevice(), search, tmp_path / "run",
                   SearchSettings(strategy="uniform", budget=3, confidence=0.95), confirm=confirm)


def test_a_confirmation_part_too_small_for_the_budget_is_flagged_up_front(tmp_path, demo):
    """247 images given, 74 in confirmation: nothing can be confirmed at 1 point / 90 %;
    the run warns before searching, skips fine-tuning and the report says why."""
    m, d = demo.model, demo.val
    search, confirm = split_for_confirmation(d.subset(247), 0.3, seed=0)
    assert len(confirm) == 74
    events = []
    calib = load_npz(demo_paths()[2], input_specs(m)).subset(32)
    r = run_search(m, load_target("host"), NullDevice(), search, tmp_path / "run",
                   SearchSettings(strategy="uniform", budget=2, max_acc_drop=1.0, eval_subset=64),
                   confirm=confirm, calib=calib, on_event=lambda k, i: events.append((k, i)))
    warn = [i["text"] for k, i in events if k == "warning"]
    assert len(warn) == 1 and "confirmation part has 74 images" in warn[0]
    assert "images are needed" in warn[0] and events.index(("warning", {"text": warn[0]})) < 2
    assert r.best is None
    from pfcompile.search.finalist import finetune_finalist
    from pfcompile.search.report import build_report

    # a candidate qualified on the 173-image search part, but fine-tuning it cannot help
    assert r.finalists and all(not x["confirmed"] for x in r.confirmation)
    assert all(x["acc_verdict"] == "too_wide" for x in r.confirmation)
    info = finetune_finalist(r, m, search, "search part", search, NullDevice(), tmp_path / "ft", 1)
    assert info["deployed"] is False and info["error"].startswith("not fine-tuned: the confirmation")
    assert not (tmp_path / "ft").exists()
    rep = build_report(r)
    assert rep["accuracy"]["warnings"] == warn


def test_recoverable_candidates_beat_the_best_and_come_best_first():
    """``select_recoverable``: measured trials over the budget but within the drop
    fine-tuning may win back, faster than the best qualifying one, fastest first; with a
    latency goal, only when nothing qualified, most accurate first."""
    from pfcompile.search.confirm import select_recoverable
    from pfcompile.search.judge import strategy_view
    from pfcompile.search.strategies import Goal

    def t(i, ms, drop, feasible=False, recoverable=True, status="ok"):
        return {"id": i, "status": status, "latency_ms": ms, "acc_drop": drop,
                "acc_drop_upper": drop + 0.5, "size_mb": 1.0, "feasible": feasible,
                "recoverable": recoverable}

    goal, steer = Goal(1.0), Goal(10.0)
    base = {"latency_ms": 10.0}
    trials = [t(0, 8.0, 0.2, feasible=True), t(1, 5.0, 4.0), t(2, 3.0, 8.0), t(3, 9.0, 3.0),
              t(4, 2.0, 30.0, recoverable=False), t(5, 1.0, 2.0, status="failed")]
    best = trials[0]
    assert [r["id"] for r in select_recoverable(trials, base, goal, steer, best)] == [2, 1]
    assert [r["id"] for r in select_recoverable(trials, base, goal, steer, None)] == [2, 1, 3]
    lat_goal, lat_steer = Goal(1.0, latency_ms=6.0), Goal(10.0, latency_ms=6.0)
    assert select_recoverable(trials, base, lat_goal, lat_steer, best) == []
    assert [r["id"] for r in select_recoverable(trials, base, lat_goal, lat_steer, None)] == [1, 2]
    # the strategy learns the recoverable trials as the ones to aim at
    assert strategy_view(trials[1])["feasible"] is True
    assert strategy_view(trials[4])["feasible"] is False
    assert strategy_view({k: v for k, v in trials[1].items() if k != "recoverable"})["feasible"] is False


def test_run_fine_tunes_a_recoverable_candidate_before_the_finalist(tmp_path, fast_settings):
    """With --train, the search steers towards drops fine-tuning may win back
    (``--finetune-drop``) and fine-tunes the fastest such candidate first; it is deployed
    only when, after fine-tuning, its drop qualifies on the search part and is confirmed;
    each candidate tried is in the report with what happened. Without --train nothing
    changes: no trial is marked recoverable."""
    from dataclasses import replace

    from pfcompile.search import DeviceSpec, RunConfig, run

    settings = replace(fast_settings, max_acc_drop=0.0, confidence=0.0)
    rep = run(RunConfig(settings=settings, device=DeviceSpec(null=True),
                        out_dir=tmp_path / "dist", train=demo_paths()[2], finetune_epochs=1,
                        finetune_drop=100.0, finetune_candidates=1,
                        cache_dir=tmp_path / "cache"))
    trials = {r["id"]: r for r in map(json.loads, (tmp_path / "dist" / "run" / "trials.jsonl")
                                      .read_text().splitlines()) if r.get("type") == "trial"}
    assert trials and all("recoverable" in r for r in trials.values() if r["status"] == "ok")
    ft = rep["finetune"]
    first = ft["tried"][0]
    assert first["of"].startswith("recoverable candidate")
    t = trials[first["trial"]]
    assert t["recoverable"] is True and t["feasible"] is False
    assert t["latency_ms"] < rep["baseline"]["latency_ms"]
    assert len(ft["tried"]) <= 2   # one recoverable candidate, then the finalist (if any)
    for tr in ft["tried"]:
        assert tr["after_top1"] is not None
        assert tr["deployed"] or tr["error"]
    if first["deployed"]:
        assert rep["best"]["recovered"] is True and rep["best"]["finetuned"] is True
        assert rep["best"]["acc_drop"] <= 0.0 and first["confirmation"]["confirmed"]
    else:
        assert "after fine-tuning" in first["error"] or "not confirmed" in first["error"] \
            or "lowered top-1" in first["error"] or "no progress" in first["error"]
    html = (tmp_path / "dist" / "report.html").read_text()
    assert f"<td class=\"t\">trial {first['trial']}</td>" in html and "recoverable candidate" in html
    assert rep["best"] is None or rep["best"]["recovered"] is bool(first["deployed"])
    rep2 = run(RunConfig(settings=settings, device=DeviceSpec(null=True),
                         out_dir=tmp_path / "dist2", cache_dir=tmp_path / "cache"))
    assert rep2.get("finetune") is None
    log2 = (tmp_path / "dist2" / "run" / "trials.jsonl").read_text()
    assert '"recoverable"' not in log2
