"""``report.html``: one self-contained page (inline SVG, no scripts, no external files)
drawn from ``report.json`` and the trial records.

Top to bottom: the headline (what was deployed, its latency and size beside the
original's, its speedup over the original compiled by pfcompile and over the original
in onnxruntime, its drop with the interval on the search part and on the confirmation
part; or why nothing was deployed), the measured latency vs accuracy plot (every
candidate with its interval as an error bar, refused ones hollow, the Pareto front of
the qualified ones as a line, the baseline and the deployed point marked, the budget
as a dashed line), predicted vs measured latency, the deployed candidate's per-layer
decisions as a table, the finalists' confirmation, every trial as a table (latency
beside size), and report.json itself. Numbers are rounded for reading; report.json
keeps them whole.
"""

from __future__ import annotations

import html
import json

import numpy as np

__all__ = ["render_html"]

_COLORS = {"hw": "#d62728", "flops": "#1f77b4", "uniform": "#2ca02c", "random": "#7f7f7f",
           "tpe": "#9467bd", "rl": "#ff7f0e", "bo": "#8c564b"}

_e = html.escape


def _ms(v) -> str:
    if v is None:
        return "-"
    v = float(v)
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _f(v, digits: int = 2, suffix: str = "") -> str:
    return "-" if v is None else f"{float(v):.{digits}f}{suffix}"


def _pct(v, digits: int = 1) -> str:
    return "-" if v is None else f"{100 * float(v):.{digits}f} %"


def _mb(v) -> str:
    return "-" if v is None else f"{float(v):.3f} MB"


def _ci(rec: dict) -> str:
    lo, hi = rec.get("acc_drop_lower"), rec.get("acc_drop_upper")
    if lo is None or hi is None:
        return "-"
    return f"[{lo:.2f}, {hi:.2f}]"


# ----------------------------------------------------------------------------- svg
def _scale(v, lo, hi, a, b):
    return a + (b - a) * ((v - lo) / (hi - lo) if hi > lo else 0.5)


def _axes(W, H, L, R, T, B, x0, x1, y0, y1, xlabel, ylabel, title) -> list[str]:
    sx = lambda v: _scale(v, x0, x1, L, W - R)
    sy = lambda v: _scale(v, y0, y1, H - B, T)
    o = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
         f'font-size="11" style="background:#fff">'),
         f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="13">{_e(title)}</text>',
         f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="#000"/>',
         f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="#000"/>',
         f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle">{_e(xlabel)}</text>',
         f'<text x="14" y="{H / 2}" text-anchor="middle" transform="rotate(-90 14 {H / 2})">{_e(ylabel)}</text>']
    for v in np.linspace(x0, x1, 5):
        o.append(f'<text x="{sx(v):.1f}" y="{H - B + 14}" text-anchor="middle">{v:.3g}</text>')
    for v in np.linspace(y0, y1, 5):
        o.append(f'<text x="{L - 4}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    return o


def _range(vals: list[float]) -> tuple[float, float]:
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.06 or max(abs(hi) * 0.05, 0.5)
    return lo - pad, hi + pad


def _pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated (lower latency, higher accuracy) points, by latency."""
    front, best = [], -np.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _pareto_svg(report: dict, runs: dict[str, list[dict]], acc_key: str, unit: str) -> str:
    base = report["baseline"]
    b_acc = base.get(acc_key)
    if b_acc is None:
        return "<p>Measured latency vs accuracy: no accuracy for the baseline</p>"
    b_acc = 100 * b_acc
    budget = (report.get("goal") or {}).get("max_acc_drop")
    best = report.get("best") or {}
    pts = []   # (strategy, trial, latency, acc, acc_lo, acc_hi, qualified)
    for s, ts in runs.items():
        for t in ts:
            if t.get("status") != "ok" or t.get(acc_key) is None or t.get("latency_ms") is None:
                continue
            acc = 100 * t[acc_key]
            drop = t.get("acc_drop")
            lo = acc - (t["acc_drop_upper"] - drop) if t.get("acc_drop_upper") is not None else acc
            hi = acc + (drop - t["acc_drop_lower"]) if t.get("acc_drop_lower") is not None else acc
            pts.append((s, t, float(t["latency_ms"]), acc, lo, hi, bool(t.get("feasible"))))
    xs = [p[2] for p in pts] + [base["latency_ms"]]
    ys = [p[4] for p in pts] + [p[5] for p in pts] + [b_acc]
    if budget is not None:
        ys.append(b_acc - budget)
    x0, x1 = _range(xs)
    y0, y1 = _range(ys)
    W, H, L, R, T, B = 660, 400, 60, 150, 30, 45
    sx = lambda v: _scale(v, x0, x1, L, W - R)
    sy = lambda v: _scale(v, y0, y1, H - B, T)
    o = _axes(W, H, L, R, T, B, x0, x1, y0, y1, f"measured latency (ms){unit}", f"{acc_key} (%)",
              "Measured latency vs accuracy (bars: interval of the drop)")
    if budget is not None:
        yb = sy(b_acc - budget)
        o.append(f'<line x1="{L}" y1="{yb:.1f}" x2="{W - R}" y2="{yb:.1f}" stroke="#d00" '
                 f'stroke-dasharray="5 4"/><text x="{W - R + 4}" y="{yb + 4:.1f}" fill="#d00">'
                 f'budget -{budget:g} pts</text>')
    front = _pareto_front([(p[2], p[3]) for p in pts if p[6]] + [(base["latency_ms"], b_acc)])
    if len(front) > 1:
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in front)
        o.append(f'<polyline points="{path}" fill="none" stroke="#444" stroke-width="1.5" '
                 f'class="pareto-front"/>')
    for s, t, x, y, lo, hi, qual in pts:
        c = _COLORS.get(s, "#ff7f0e")
        o.append(f'<line x1="{sx(x):.1f}" y1="{sy(lo):.1f}" x2="{sx(x):.1f}" y2="{sy(hi):.1f}" '
                 f'stroke="{c}" stroke-opacity="0.6"/>')
        fill = c if qual else "#fff"
        o.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{fill}" stroke="{c}" '
                 f'stroke-width="1.5"><title>trial {t.get("id")}: {_ms(x)} ms, {y:.2f} %, drop '
                 f'{_ci(t)}</title></circle>')
    bx0, by0 = sx(base["latency_ms"]), sy(b_acc)
    o.append(f'<rect x="{bx0 - 5:.1f}" y="{by0 - 5:.1f}" width="10" height="10" fill="#000">'
             f'<title>baseline (original): {_ms(base["latency_ms"])} ms, {b_acc:.2f} %</title></rect>')
    deployed = best.get("latency_ms") is not None and best.get(acc_key) is not None
    if deployed:
        bx, by = sx(best["latency_ms"]), sy(100 * best[acc_key])
        o.append(f'<circle cx="{bx:.1f}" cy="{by:.1f}" r="9" fill="none" stroke="#000" '
                 f'stroke-width="2"/>')
    ly = T + 8
    for i, name in enumerate(runs):
        c = _COLORS.get(name, "#ff7f0e")
        o.append(f'<circle cx="{W - R + 12}" cy="{ly + 16 * i}" r="4" fill="{c}"/>'
                 f'<text x="{W - R + 20}" y="{ly + 4 + 16 * i}">{_e(name)}</text>')
    ly += 16 * len(runs) + 6
    lx = W - R + 12
    o.append(f'<circle cx="{lx}" cy="{ly}" r="4" fill="#fff" stroke="#555"/>'
             f'<text x="{lx + 8}" y="{ly + 4}">refused</text>'
             f'<line x1="{lx - 6}" y1="{ly + 18}" x2="{lx + 6}" y2="{ly + 18}" stroke="#444" '
             f'stroke-width="1.5"/><text x="{lx + 8}" y="{ly + 22}">Pareto front</text>'
             f'<rect x="{lx - 5}" y="{ly + 31}" width="10" height="10" fill="#000"/>'
             f'<text x="{lx + 8}" y="{ly + 40}" font-weight="bold">baseline (original)</text>')
    if deployed:
        o.append(f'<circle cx="{lx}" cy="{ly + 54}" r="7" fill="none" stroke="#000" stroke-width="2"/>'
                 f'<text x="{lx + 11}" y="{ly + 58}" font-weight="bold">deployed</text>')
    o.append("</svg>")
    return "".join(o)


def _scatter(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str,
             title: str) -> str:
    """Predicted vs measured, with the diagonal."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return f"<p>{_e(title)}: no data</p>"
    lo, hi = _range([v for p in pts for v in p])
    W, H, L, R, T, B = 420, 340, 60, 20, 30, 45
    sx = lambda v: _scale(v, lo, hi, L, W - R)
    sy = lambda v: _scale(v, lo, hi, H - B, T)
    o = _axes(W, H, L, R, T, B, lo, hi, lo, hi, xlabel, ylabel, title)
    o.append(f'<line x1="{sx(lo):.1f}" y1="{sy(lo):.1f}" x2="{sx(hi):.1f}" y2="{sy(hi):.1f}" '
             'stroke="#999" stroke-dasharray="4"/>')
    for i, (name, s) in enumerate(series.items()):
        c = _COLORS.get(name, "#ff7f0e")
        for x, y in s:
            o.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{c}" fill-opacity="0.7"/>')
        o.append(f'<circle cx="{L + 14}" cy="{T + 8 + 14 * i}" r="4" fill="{c}"/>'
                 f'<text x="{L + 22}" y="{T + 12 + 14 * i}">{_e(name)}</text>')
    o.append("</svg>")
    return "".join(o)


def _bars(values: dict[str, float], title: str) -> str:
    if not values:
        return f"<p>{_e(title)}: no data</p>"
    W, row = 520, 16
    H = 40 + row * len(values)
    o = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
         f'font-size="10" style="background:#fff">'),
         f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13">{_e(title)}</text>']
    for i, (k, v) in enumerate(values.items()):
        y = 28 + i * row
        o.append(f'<text x="230" y="{y + 11}" text-anchor="end">{_e(k[-40:])}</text>'
                 f'<rect x="235" y="{y}" width="{240 * v:.1f}" height="{row - 3}" fill="#d62728"/>'
                 f'<text x="{240 + 240 * v:.1f}" y="{y + 11}">{v:.2f}</text>')
    o.append("</svg>")
    return "".join(o)


# ----------------------------------------------------------------------------- tables
def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    h = "".join(f"<th>{_e(x)}</th>" for x in head)
    # prose cells (reasons, verdicts) read left-aligned; numbers right-aligned
    td = lambda c: f'<td class="t">{c}</td>' if len(c) > 24 and " " in c else f"<td>{c}</td>"
    body = "".join("<tr>" + "".join(td(c) for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def _headline(report: dict, acc_key: str) -> str:
    base, best = report["baseline"], report.get("best")
    rm = report.get("remeasured") or {}
    ort = report.get("onnxruntime") or {}
    acc = report.get("accuracy") or {}
    rows = [["original (baseline)", f'<b id="baseline-ms">{_ms(base["latency_ms"])}</b> ms',
             _mb(base.get("size_mb")), _pct(base.get(acc_key), 2), "1.00x", "-"]]
    if ort.get("ms") is not None:
        rows.append([(f'original in onnxruntime {_e(str(ort.get("version", "")))} '
                     f'({ort.get("threads")} thread{"s" if ort.get("threads") != 1 else ""})'),
                     f'<span id="ort-ms">{_ms(ort["ms"])}</span> ms', _mb(base.get("size_mb")),
                     _pct(base.get(acc_key), 2), "-", "-"])
    out = []
    if best:
        conf = best.get("confirmation") or {}
        rows.append(["<b>deployed</b>" + (" (fine-tuned)" if best.get("finetuned") else ""),
                     f'<b id="best-ms">{_ms(best["latency_ms"])}</b> ms', _mb(best.get("size_mb")),
                     _pct(best.get(acc_key), 2), f'<b id="best-speedup">{best["speedup"]:.2f}x</b>',
                     f'{_f(best.get("acc_drop"))} {_ci(best)}'])
        out.append(_table(["model", "latency", "size", acc_key, "speedup (paired)",
                           "drop, points [interval]"], rows, "headline"))
        line = []
        if rm.get("speedup"):
            line.append(f're-measured round-robin ({rm.get("repeats")}x, medians): '
                        f'{_ms(rm.get("baseline_ms"))} ms &rarr; {_ms(rm.get("best_ms"))} ms, '
                        f'<b id="remeasured-speedup">{rm["speedup"]:.2f}x</b>')
        if report.get("speedup_vs_onnxruntime"):
            line.append(f'vs onnxruntime: <b id="speedup-ort">{report["speedup_vs_onnxruntime"]:.2f}x'
                        f'</b>' + (" (slower than the user's alternative)"
                                   if report["speedup_vs_onnxruntime"] < 1 else ""))
        if line:
            out.append("<p>" + "; ".join(line) + "</p>")
        cf = acc.get("confidence")
        level = f"{cf:.0%}" if cf else "plain estimate"
        s_txt = (f'search part ({best.get("acc_n")} images): drop <b id="search-drop">'
                 f'{_f(best.get("acc_drop"))}</b> points, interval {_ci(best)} ({level})')
        if conf:
            s_txt += (f'; confirmation part ({conf.get("acc_n")} images, never seen by the search): '
                      f'drop <b id="confirm-drop">{_f(conf.get("acc_drop"))}</b> points, '
                      f'interval {_ci(conf)}')
        out.append(f"<p>Accuracy, budget {_f(acc.get('max_acc_drop'))} points: {s_txt}.</p>")
    else:
        out.append(_table(["model", "latency", "size", acc_key, "speedup", "drop"], rows, "headline"))
        if ort.get("ms") is not None and ort.get("speedup"):
            out.append(f'<p>The original compiled by pfcompile vs onnxruntime: '
                       f'<b id="speedup-ort">{ort["speedup"]:.2f}x</b></p>')
        out.append(f'<p class="warn"><b>Nothing deployed.</b> '
                   f'{_e(report.get("why_no_candidate") or "no candidate met the goal")}</p>')
    for w in acc.get("warnings") or []:
        out.append(f'<p class="warn"><b>Data too small:</b> {_e(w)}</p>')
    if ort.get("note"):
        out.append(f"<p>onnxruntime: {_e(ort['note'])}</p>")
    return "".join(out)


def _decisions_table(best: dict | None) -> str:
    if not best or not best.get("decisions"):
        return ""
    rows = []
    for d in best["decisions"]:
        if d["kind"] == "keep":
            val = f'{d["value"]} of {d.get("full", "?")} channels ({_pct(d.get("keep_ratio"), 0)})'
        elif d["kind"] == "bits":
            val = "float32" if d["value"] == 32 else f'int{d["value"]}'
        else:
            val = _pct(d["value"], 0)
        changed = "" if d["value"] == d.get("default") else "changed"
        rows.append([_e(d["target"]), _e(d["kind"]), val, changed])
    return "<h2>Deployed candidate: per-layer decisions</h2>" + _table(
        ["channel group / layer", "knob", "decision", ""], rows, "decisions")


def _finalists_table(report: dict) -> str:
    fin = report.get("finalists")
    if not fin:
        return ""
    rows = [[str(r.get("trial")) + (" (fine-tuned)" if r.get("finetuned") else ""),
             _f(r.get("acc_drop")), _ci(r), str(r.get("acc_n")),
             "yes" if r.get("confirmed") else "no", _e(r.get("acc_refused") or "")] for r in fin]
    return ("<h2>Finalists on the confirmation part</h2>"
            + _table(["trial", "drop (points)", "interval", "images", "confirmed", "why not"], rows))


def _trials_table(runs: dict[str, list[dict]], acc_key: str) -> str:
    rows = []
    for s, ts in runs.items():
        for t in ts:
            ok = t.get("status") == "ok"
            if not ok:
                why = "failed: " + _e(str(t.get("error") or "")[:80])
            elif t.get("feasible"):
                why = "qualified"
            elif t.get("acc_verdict") in ("too_wide", "over_budget"):
                why = "refused: " + ("interval too wide" if t["acc_verdict"] == "too_wide"
                                     else "upper bound over budget")
            else:
                why = "goal not met"
            rows.append([_e(s), str(t.get("id")), _ms(t.get("latency_ms")) if ok else "-",
                         _mb(t.get("size_mb")), _f(t.get("speedup")) + ("x" if t.get("speedup") else ""),
                         _pct(t.get(acc_key), 2), _f(t.get("acc_drop")), _ci(t), why])
    return ("<h2>All trials</h2>" + _table(["strategy", "trial", "latency ms", "size", "speedup",
                                            acc_key, "drop", "interval", "verdict"], rows, "trials"))


def render_html(report: dict, runs: dict[str, list[dict]]) -> str:
    """``runs``: strategy name -> its trial records (all drawn on the Pareto plot)."""
    acc_key = "top1" if report["baseline"].get("top1") is not None else "agreement"
    unit = " (EMULATED: functional only)" if report.get("emulated") else ""
    if report.get("simulated"):
        unit = " (SIMULATED: accelerator cycle model + host ops)"
    pvm = {s: [(t["latency_ms"], t["pred_ms"]) for t in ts
               if t.get("status") == "ok" and t.get("pred_ms") is not None] for s, ts in runs.items()}
    pvm = {k: v for k, v in pvm.items() if v}
    keep = (report.get("best") or {}).get("keep") or {}
    cm = report.get("cost_model", {})
    tau = cm.get("kendall_tau")
    within = cm.get("within_10pct")
    acc = report.get("accuracy") or {}
    ft = report.get("finetune")
    ft_html = ""
    if ft:
        rows = [[f"trial {t.get('trial')}", _e(str(t.get("of", "best candidate"))),
                 _pct(t.get("before_top1")), _pct(t.get("after_top1")),
                 "deployed" if t.get("deployed") else "NOT deployed: " + _e(str(t.get("error")))]
                for t in (ft.get("tried") or [ft])]
        body = "".join("<tr>" + "".join(f'<td class="t">{c}</td>' for c in r) + "</tr>"
                       for r in rows)
        ft_html = (f"<h2>Fine-tuning</h2><p>{ft.get('epochs')} epochs on "
                   f"{_e(str(ft.get('train_data')))}, each judged again and confirmed after it</p>"
                   "<table><tr><th>candidate</th><th>why</th><th>top-1 before</th>"
                   f"<th>after</th><th>outcome</th></tr>{body}</table>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>pfcompile run report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:20px auto;color:#111}}
pre{{background:#f4f4f4;padding:8px;font-size:11px}} .g{{display:flex;flex-wrap:wrap;gap:12px}}
table{{border-collapse:collapse;margin:8px 0}} td,th{{border:1px solid #ccc;padding:3px 8px;
text-align:right;font-size:13px}} th{{background:#eee}} td:first-child,td.t{{text-align:left}}
.warn{{background:#fff3cd;padding:8px}}</style></head><body>
<h1>pfcompile run report{_e(unit)}</h1>
{f"<p><b>{_e(report['note'])}</b></p>" if report.get("note") else ""}
{_headline(report, acc_key)}
<p>{report['trials']} trials ({report.get('failed_trials', 0)} failed), {report['device_measurements']}
device measurements, {report.get('kernel_measurements', 0)} kernel measurements; search on
{acc.get('search_n')} images, confirmation on {acc.get('confirm_n') or 'no separate'} images;
refused for a too-wide interval: {(report.get('refused') or {}).get('too_wide', 0)}, for the upper
bound over budget: {(report.get('refused') or {}).get('over_budget', 0)}.
Cost model on held-out candidates: within 10 %: {_pct(within, 0)}, Kendall tau: {_f(tau)}
(n={cm.get('n_heldout')}).</p>
<div class="g">
{_pareto_svg(report, runs, acc_key, unit)}
{_scatter(pvm, 'measured latency (ms)', 'predicted latency (ms)', 'Predicted vs measured latency')}
{_bars(keep, 'Deployed candidate: keep ratio per channel group')}
</div>
{_decisions_table(report.get('best'))}
{_finalists_table(report)}
{ft_html}
{_trials_table(runs, acc_key)}
<details><summary>report.json</summary><pre>{_e(json.dumps(report, indent=1))}</pre></details>
</body></html>"""
