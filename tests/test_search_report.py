"""report.html rendered in headless Chromium (the page a user opens): a non-blank
screenshot with the plot drawn, the key numbers in the DOM; the onnxruntime timer in its
own process; (slow) `run` on the host device reports the speedup vs onnxruntime."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import onnxruntime as ort
import pytest

from pfcompile.data import load_npz
from pfcompile.errors import DeviceError
from pfcompile.model import input_specs, load_onnx
from pfcompile.paths import demo_paths
from pfcompile.search.api import remeasure
from pfcompile.search.confirm import split_for_confirmation
from pfcompile.search.devices import NullDevice
from pfcompile.search.loop import SearchSettings, run_search
from pfcompile.search.ort_compare import OrtTimer
from pfcompile.search.report import write_report
from pfcompile.search.report_html import _ms
from pfcompile.targets import load_target

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-background-networking", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", *args],
                          check=False, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    """A search with a confirmation split on the NULL device, written with a round-robin
    re-measurement and an onnxruntime timing (numbers given, so the page is known)."""
    m = load_onnx(demo_paths()[0])
    d = load_npz(demo_paths()[1], input_specs(m))
    calib = load_npz(demo_paths()[2], input_specs(m)).subset(32)
    search, confirm = split_for_confirmation(d, 0.3, seed=0)
    out = tmp_path_factory.mktemp("report")
    r = run_search(m, load_target("host"), NullDevice(), search, out / "run",
                   SearchSettings(strategy="uniform", budget=3, max_acc_drop=2.0, eval_subset=64),
                   confirm=confirm, calib=calib)
    assert r.best is not None
    final = {"baseline_ms": 1.21, "best_ms": 1.07, "onnxruntime_ms": 0.52, "repeats": 3,
             "speedup": 1.21 / 1.07}
    ortinfo = {"ms": 0.52, "threads": 1, "version": ort.__version__, "speedup": 0.52 / 1.07,
               "deployed_ms": 1.07, "deployed": "best"}
    rep = write_report(r, out, final=final, onnxruntime=ortinfo)
    return out, rep, r


def test_report_json_has_both_scores_and_the_onnxruntime_headline(report_dir):
    _, rep, r = report_dir
    best = rep["best"]
    assert best["search"]["acc_n"] == 378 and best["confirmation"]["acc_n"] == 162
    assert best["confirmation"]["confirmed"] is True
    assert best["acc_drop_lower"] <= best["acc_drop"] <= best["acc_drop_upper"]
    assert rep["speedup_vs_onnxruntime"] == pytest.approx(0.52 / 1.07)
    assert [f["trial"] for f in rep["finalists"]] == [x["trial"] for x in r.confirmation]
    keep = [x for x in best["decisions"] if x["kind"] == "keep"]
    assert len(keep) == len(r.space) and all(0 < x["keep_ratio"] <= 1 for x in keep)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (make apt-deps)")
def test_report_html_renders_in_headless_chromium(report_dir, tmp_path):
    from PIL import Image

    out, rep, r = report_dir
    url = (out / "report.html").resolve().as_uri()
    dom = _chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    best = rep["best"]
    num = lambda el: re.search(rf'id="{el}"[^>]*>([^<]+)<', html).group(1)
    assert num("best-ms") == _ms(best["latency_ms"]) and num("baseline-ms") == _ms(rep["baseline"]["latency_ms"])
    assert num("best-speedup") == f"{best['speedup']:.2f}x"
    assert num("remeasured-speedup") == "1.13x" and num("speedup-ort") == "0.49x"
    assert num("ort-ms") == "0.520" and "slower than the user's alternative" in html
    assert num("confirm-drop") == f"{best['confirmation']['acc_drop']:.2f}"
    assert num("search-drop") == f"{best['acc_drop']:.2f}"
    assert "baseline (original)" in html and 'class="pareto-front"' in html and "deployed" in html
    # the Pareto plot and the keep ratios; `uniform` predicts no latency, so no third plot
    assert html.count("<svg") == 2 and "Predicted vs measured latency: no data" in html
    assert len(re.findall(r"<tr>", html.split('class="trials"')[1].split("</table>")[0])) == 1 + len(r.trials)
    assert len(re.findall(r"<tr>", html.split('class="decisions"')[1].split("</table>")[0])) == \
        1 + len(best["decisions"])
    shot = tmp_path / "shot.png"
    res = _chromium(tmp_path, "--window-size=1200,1600", f"--screenshot={shot}", url)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (1600, 1200)
    ink = img.min(axis=2) < 200
    assert ink.mean() > 0.02                       # text, tables and plots, not a blank page
    cols = np.flatnonzero(ink.any(axis=0))
    assert cols[-1] - cols[0] > 800                # laid out across the page
    r_, g_, b_ = img[..., 0], img[..., 1], img[..., 2]
    red = (r_ > 180) & (g_ < 90) & (b_ < 90)       # the hw points and the budget line
    assert red.sum() > 200


def test_onnxruntime_timer_runs_in_its_own_process(tmp_path):
    m = load_onnx(demo_paths()[0])
    with OrtTimer(m, 1, tmp_path, runs=5, min_ms=5) as timer:
        assert timer.version == ort.__version__ and timer.proc.pid > 0
        dev = NullDevice()
        out = remeasure(dev, {"baseline": m}, tmp_path / "w", 2, others={"onnxruntime": timer.measure})
        assert out["onnxruntime_ms"] > 0 and out["baseline_ms"] > 0 and dev.calls == 2
        assert len(timer.calls) == 2 and all(c >= 5 for c in timer.calls)
    assert timer.proc.poll() is not None           # closed with the context
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(DeviceError, match="onnxruntime timing process"):
        OrtTimer(tmp_path / "bad.onnx", 1, tmp_path / "b", timeout_s=60)


@pytest.mark.slow
def test_run_on_host_reports_speedup_vs_onnxruntime(tmp_path):
    """The real path: the host device over RPC, the original re-measured alternating with
    onnxruntime in its own process, same thread count."""
    from pfcompile.search import DeviceSpec, RunConfig, run

    rep = run(RunConfig(settings=SearchSettings(strategy="uniform", budget=1, max_acc_drop=3.0),
                        out_dir=tmp_path / "dist", cache_dir=tmp_path / "cache",
                        device=DeviceSpec(threads=1, port_range=(9450, 9474)), final_repeats=2))
    o = rep["onnxruntime"]
    assert o["threads"] == 1 and o["ms"] > 0 and o["version"] == ort.__version__
    assert len(o["calls_per_round"]) == 2
    ours = rep["remeasured"]["best_ms"] if rep["best"] else rep["remeasured"]["baseline_ms"]
    assert rep["speedup_vs_onnxruntime"] == pytest.approx(o["ms"] / ours)
    assert rep["remeasured"]["onnxruntime_ms"] == o["ms"]
