"""``report.json`` and a self-contained ``report.html`` (inline SVG, no scripts):
Pareto scatter of measured latency vs accuracy for every strategy given,
per-group keep ratios of the best candidate, predicted vs measured latency."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from pfcompile.artifact_size import artifact_size
from pfcompile.errors import PfcompileError
from pfcompile.search.latency_model import kendall_tau

__all__ = ["build_report", "cost_model_stats", "render_html", "write_report"]

_COLORS = {"hw": "#d62728", "flops": "#1f77b4", "uniform": "#2ca02c", "random": "#7f7f7f",
           "tpe": "#9467bd", "rl": "#ff7f0e", "bo": "#8c564b"}


def cost_model_stats(trials: list[dict]) -> dict:
    """Prediction (made before the candidate was measured) vs measurement."""
    pts = [(t["pred_ms"], t["latency_ms"]) for t in trials
           if t.get("status") == "ok" and t.get("pred_ms") is not None]
    if not pts:
        return {"within_10pct": None, "kendall_tau": None, "n_heldout": 0}
    p, m = np.array(pts).T
    within = float(np.mean(np.abs(p - m) / m <= 0.10))
    tau = kendall_tau(p, m)
    return {"within_10pct": within, "kendall_tau": None if np.isnan(tau) else tau,
            "n_heldout": len(pts), "mape": float(np.mean(np.abs(p - m) / m))}


def build_report(result, final: dict | None = None, finetune: dict | None = None) -> dict:
    b = result.baseline
    best = result.best
    out = {
        "baseline": {"latency_ms": b["latency_ms"], "top1": b.get("top1"),
                     "agreement": b.get("agreement"), "macs": b.get("macs"),
                     "size_mb": b.get("size_mb"), **_size_fields(b)},
        "best": None,
        "trials": len(result.trials),
        "failed_trials": sum(1 for t in result.trials if t["status"] != "ok"),
        "device_measurements": result.device_measurements,
        "kernel_measurements": result.kernel_measurements,
        "cost_model": cost_model_stats(result.trials),
        "emulated": result.emulated,
        "strategy": result.strategy,
        "goal": {"mode": result.goal.mode, "max_acc_drop": result.goal.max_acc_drop,
                 "latency_ms": result.goal.latency_ms, "size_mb": result.goal.size_mb},
        "search_space": {"knobs": len(result.space), "size": result.space.size},
    }
    if finetune is not None:
        # the best candidate fine-tuned (CE + KD from the original) before the final compile
        out["finetune"] = finetune
    if final is not None:
        # baseline and best re-measured round-robin at the end: the like-with-like speedup
        out["remeasured"] = final
    if result.emulated:
        out["note"] = "latencies measured on an emulated device (qemu): functional checks only"
    simulated = bool(getattr(result, "simulated", False))
    out["simulated"] = simulated
    if simulated:
        out["note"] = ("SIMULATED latencies: accelerator time from the simulator's cycle model "
                       "(no FPGA ran) plus host-op wall clock on the machine serving the "
                       "simulator; baseline = the original model quantized to uniform 8 bits")
        for k in _SIM_KEYS:
            if k in b:
                out["baseline"][k] = b[k]
        if "deployed_top1" in b:
            out["baseline"]["deployed_top1"] = b["deployed_top1"]
    if best is not None:
        out["best"] = {"latency_ms": best["latency_ms"], "top1": best.get("top1"),
                       "agreement": best.get("agreement"), "speedup": best["speedup"],
                       "acc_drop": best["acc_drop"], "config": best["config"],
                       "keep": best.get("keep"), "macs": best.get("macs"),
                       "size_mb": best.get("size_mb"), **_size_fields(best),
                       "trial": best["id"]}
        for kind in ("bits", "sparsity"):  # per-layer knobs moved off their default
            if kind in best:
                out["best"][kind] = best[kind]
        if simulated:
            out["best"].update({k: best[k] for k in _SIM_KEYS if k in best})
    return out


def _size_fields(rec: dict) -> dict:
    """``size_bytes`` (+ code and weights apart) of the compiled files, when measured;
    ``size_mb`` is then the same bytes (else the prediction, ``size_measured`` False)."""
    size = rec.get("size") or {}
    return {"size_bytes": size.get("size_bytes"), "code_bytes": size.get("code_bytes"),
            "weight_bytes": size.get("weight_bytes"), "size_measured": bool(size)}


#: per-measurement fields of the simulated accelerator device (accel_device.py)
_SIM_KEYS = ("accel_ms_simulated", "host_ms_measured", "accel_cycles", "latency_kind",
             "layers_on_accel")


# ----------------------------------------------------------------------------- svg
def _scale(v, lo, hi, a, b):
    return a + (b - a) * ((v - lo) / (hi - lo) if hi > lo else 0.5)


def _scatter(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str,
             title: str, diagonal: bool = False, extra: list[tuple[float, float, str]] = ()) -> str:
    W, H, L, R, T, B = 520, 340, 60, 20, 30, 45
    pts = [p for s in series.values() for p in s] + [(x, y) for x, y, _ in extra]
    if not pts:
        return f"<p>{html.escape(title)}: no data</p>"
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if diagonal:
        x0 = y0 = min(x0, y0)
        x1 = y1 = max(x1, y1)
    px = (x1 - x0) * 0.05 or 1
    py = (y1 - y0) * 0.05 or 1
    x0, x1, y0, y1 = x0 - px, x1 + px, y0 - py, y1 + py
    sx = lambda v: _scale(v, x0, x1, L, W - R)
    sy = lambda v: _scale(v, y0, y1, H - B, T)
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
         f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
         f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="#000"/>',
         f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="#000"/>',
         f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle">{html.escape(xlabel)}</text>',
         f'<text x="14" y="{H / 2}" text-anchor="middle" transform="rotate(-90 14 {H / 2})">{html.escape(ylabel)}</text>']
    for v in np.linspace(x0, x1, 5):
        o.append(f'<text x="{sx(v):.1f}" y="{H - B + 14}" text-anchor="middle">{v:.3g}</text>')
    for v in np.linspace(y0, y1, 5):
        o.append(f'<text x="{L - 4}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    if diagonal:
        o.append(f'<line x1="{sx(x0):.1f}" y1="{sy(y0):.1f}" x2="{sx(x1):.1f}" y2="{sy(y1):.1f}" '
                 'stroke="#999" stroke-dasharray="4"/>')
    for i, (name, s) in enumerate(series.items()):
        c = _COLORS.get(name, "#ff7f0e")
        for x, y in s:
            o.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{c}" fill-opacity="0.7"/>')
        o.append(f'<circle cx="{W - R - 90}" cy="{T + 8 + 14 * i}" r="4" fill="{c}"/>'
                 f'<text x="{W - R - 82}" y="{T + 12 + 14 * i}">{html.escape(name)}</text>')
    for x, y, label in extra:
        o.append(f'<rect x="{sx(x) - 4:.1f}" y="{sy(y) - 4:.1f}" width="8" height="8" fill="#000"/>'
                 f'<text x="{sx(x) + 7:.1f}" y="{sy(y) - 5:.1f}">{html.escape(label)}</text>')
    o.append("</svg>")
    return "".join(o)


def _bars(values: dict[str, float], title: str) -> str:
    if not values:
        return f"<p>{html.escape(title)}: no data</p>"
    W, row = 520, 16
    H = 40 + row * len(values)
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="10">',
         f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>']
    for i, (k, v) in enumerate(values.items()):
        y = 28 + i * row
        o.append(f'<text x="230" y="{y + 11}" text-anchor="end">{html.escape(k[-40:])}</text>'
                 f'<rect x="235" y="{y}" width="{240 * v:.1f}" height="{row - 3}" fill="#d62728"/>'
                 f'<text x="{240 + 240 * v:.1f}" y="{y + 11}">{v:.2f}</text>')
    o.append("</svg>")
    return "".join(o)


def _mb(entry: dict) -> str:
    """Deployed size for the summary line: measured bytes, else the prediction."""
    if entry.get("size_bytes") is not None:
        return f"{entry['size_bytes'] / 1e6:.3f} MB deployed"
    return f"~{entry['size_mb']:.3f} MB predicted" if entry.get("size_mb") is not None else "size ?"


def render_html(report: dict, runs: dict[str, list[dict]]) -> str:
    """``runs``: strategy name -> its trial records (all drawn on the Pareto plot)."""
    acc_key = "top1" if report["baseline"].get("top1") is not None else "agreement"
    pareto = {s: [(t["latency_ms"], 100 * t[acc_key]) for t in ts
                  if t.get("status") == "ok" and t.get(acc_key) is not None] for s, ts in runs.items()}
    base = report["baseline"]
    extra = [(base["latency_ms"], 100 * base[acc_key], "baseline")] if base.get(acc_key) is not None else []
    pvm = {s: [(t["latency_ms"], t["pred_ms"]) for t in ts
               if t.get("status") == "ok" and t.get("pred_ms") is not None] for s, ts in runs.items()}
    pvm = {k: v for k, v in pvm.items() if v}
    keep = (report.get("best") or {}).get("keep") or {}
    unit = " (EMULATED: functional only)" if report.get("emulated") else ""
    if report.get("simulated"):
        unit = " (SIMULATED: accelerator cycle model + host ops)"
    best = report.get("best")
    summary = (f"best: {best['latency_ms']:.3f} ms, {best['speedup']:.2f}x, accuracy drop "
               f"{best['acc_drop']:.2f} points, {_mb(best)}" if best else "no candidate met the goal")
    cm = report.get("cost_model", {})
    rm = report.get("remeasured")
    if rm and rm.get("speedup"):
        summary += (f"; re-measured round-robin ({rm['repeats']}x, medians): baseline "
                    f"{rm['baseline_ms']:.3f} ms, best {rm['best_ms']:.3f} ms, {rm['speedup']:.2f}x")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>pfcompile run report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:20px auto}} pre{{background:#f4f4f4;padding:8px}}
.g{{display:flex;flex-wrap:wrap;gap:12px}}</style></head><body>
<h1>pfcompile run report{html.escape(unit)}</h1>
{f"<p><b>{html.escape(report['note'])}</b></p>" if report.get("note") else ""}
<p>baseline {base['latency_ms']:.3f} ms, {acc_key} {100 * (base.get(acc_key) or 0):.2f}%, {_mb(base)}; {html.escape(summary)};
{report['trials']} trials, {report['device_measurements']} device measurements,
{report.get('kernel_measurements', 0)} kernel measurements.
Cost model on held-out candidates: within 10%: {cm.get('within_10pct')}, Kendall tau: {cm.get('kendall_tau')}
(n={cm.get('n_heldout')}).</p>
<div class="g">
{_scatter(pareto, 'measured latency (ms)' + unit, acc_key + ' (%)', 'Measured latency vs accuracy', extra=extra)}
{_scatter(pvm, 'measured latency (ms)', 'predicted latency (ms)', 'Predicted vs measured latency', diagonal=True)}
{_bars(keep, 'Best candidate: keep ratio per channel group')}
</div>
<h2>report.json</h2><pre>{html.escape(json.dumps(report, indent=1))}</pre>
</body></html>"""


def write_report(result, out_dir: str | Path, other_runs: dict[str, list[dict]] | None = None,
                 final: dict | None = None, finetune: dict | None = None) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep = build_report(result, final, finetune)
    try:  # what DIST/ ships (model.so / program.npz + any weight file), from the files
        rep["deployed"] = artifact_size(out).to_json()
    except PfcompileError:
        rep["deployed"] = None
    (out / "report.json").write_text(json.dumps(rep, indent=1))
    runs = dict(other_runs or {})
    runs[result.strategy] = result.trials
    (out / "report.html").write_text(render_html(rep, runs))
    return rep
