"""``report.json`` and a self-contained ``report.html`` (inline SVG, no scripts;
drawn by :mod:`pfcompile.search.report_html`).

Beyond the search's numbers the report says how far to trust them: each point's drop
with its interval (``acc_drop_lower`` / ``acc_drop_upper`` at ``accuracy.confidence``),
the deployed candidate's scores on the search part and on the confirmation part
(``best.search``, ``best.confirmation``), every finalist's confirmation, how many
candidates were refused and why, why nothing was deployed when nothing was, and the
original model in onnxruntime on the same machine (``onnxruntime``,
``speedup_vs_onnxruntime``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pfcompile.artifact_size import artifact_size
from pfcompile.errors import PfcompileError
from pfcompile.search.latency_model import kendall_tau
from pfcompile.search.report_html import render_html

__all__ = ["build_report", "cost_model_stats", "render_html", "write_report"]

_ACC_KEYS = ("top1", "agreement", "acc_drop", "acc_drop_lower", "acc_drop_upper", "acc_confidence",
             "acc_n", "acc_losses", "acc_gains", "acc_verdict", "acc_refused")


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


def build_report(result, final: dict | None = None, finetune: dict | None = None,
                 onnxruntime: dict | None = None) -> dict:
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
        # both scores: the search part (what the search chose by) and the confirmation part
        out["best"].update({k: best.get(k) for k in ("acc_drop_lower", "acc_drop_upper",
                                                     "acc_confidence", "acc_n")})
        out["best"]["search"] = {k: best.get(k) for k in _ACC_KEYS}
        out["best"]["confirmation"] = best.get("confirmation")
        out["best"]["finetuned"] = bool(best.get("finetuned"))
        # over the budget before fine-tuning, within it after (pfcompile.search.finalist)
        out["best"]["recovered"] = bool(best.get("recovered"))
        out["best"]["decisions"] = _decisions(result.space, best["config"])
    out["accuracy"] = _accuracy_section(result)
    if getattr(result, "confirmation", None) is not None:
        out["finalists"] = [{"trial": r.get("trial"), "finetuned": bool(r.get("finetuned")),
                             **{k: r.get(k) for k in _ACC_KEYS}, "confirmed": r.get("confirmed")}
                            for r in result.confirmation]
    out["refused"] = _refusals(result.trials)
    if best is None:
        out["why_no_candidate"] = _why_none(result, out)
    out["onnxruntime"] = onnxruntime
    out["speedup_vs_onnxruntime"] = (onnxruntime or {}).get("speedup")
    return out


def _size_fields(rec: dict) -> dict:
    """``size_bytes`` (+ code and weights apart) of the compiled files, when measured;
    ``size_mb`` is then the same bytes (else the prediction, ``size_measured`` False)."""
    size = rec.get("size") or {}
    return {"size_bytes": size.get("size_bytes"), "code_bytes": size.get("code_bytes"),
            "weight_bytes": size.get("weight_bytes"), "size_measured": bool(size)}


def _decisions(space, config: dict) -> list[dict]:
    """Per-group / per-layer decisions of ``config``: every knob, its value and default."""
    rows = []
    for k in space.knobs:
        if k.name not in config:
            continue
        row = {"knob": k.name, "kind": k.kind, "target": k.target, "value": config[k.name],
               "default": k.default}
        if k.kind == "keep" and k.full:
            row["full"] = k.full
            row["keep_ratio"] = config[k.name] / k.full
        rows.append(row)
    return rows


def _accuracy_section(result) -> dict:
    judge, cjudge = getattr(result, "judge", None), getattr(result, "confirm_judge", None)
    conf = judge.confidence if judge is not None else None
    return {
        "method": "paired drop vs the original on the same images; one-sided bounds from a "
                  "Bayesian paired bootstrap (Jeffreys prior), pfcompile.search.stats",
        "confidence": conf,
        "max_acc_drop": result.goal.max_acc_drop,
        "search_n": judge.n if judge is not None else None,
        "confirm_n": cjudge.n if cjudge is not None else None,
        # images on which a candidate equal to the original everywhere just qualifies
        "images_needed": judge.images_needed() if judge is not None else None,
        "finalists_tested": len(result.confirmation) if getattr(result, "confirmation", None)
        is not None else None,
        # data too small to qualify / confirm anything at this budget and confidence
        "warnings": [w for w in (j.too_small() for j in (judge, cjudge) if j is not None) if w],
    }


def _refusals(trials: list[dict]) -> dict:
    ok = [t for t in trials if t.get("status") == "ok"]
    too_wide = [t for t in ok if t.get("acc_verdict") == "too_wide"]
    over = [t for t in ok if t.get("acc_verdict") == "over_budget"]
    out = {"too_wide": len(too_wide), "over_budget": len(over)}
    if too_wide:
        out["too_wide_reason"] = too_wide[0]["acc_refused"]
    return out


def _why_none(result, rep: dict) -> str:
    trials = result.trials
    ok = [t for t in trials if t.get("status") == "ok"]
    if not ok:
        return f"all {len(trials)} trials failed; the original model is deployed"
    ref = rep["refused"]
    parts = []
    if ref["too_wide"]:
        parts.append(f"{ref['too_wide']} of {len(ok)} measured candidates were refused because "
                     f"their accuracy interval is wider than the budget ({ref['too_wide_reason']})")
    if ref["over_budget"]:
        parts.append(f"{ref['over_budget']} had the upper bound of their drop over the "
                     f"{result.goal.max_acc_drop:g}-point budget")
    conf = getattr(result, "confirmation", None)
    if conf:
        first = next((r for r in conf if not r.get("confirmed")), None)
        parts.append(f"none of the {len(conf)} finalists was confirmed on the "
                     f"{conf[0].get('acc_n')} confirmation images"
                     + (f" (first: {first['acc_refused']})" if first else ""))
    if not parts:
        parts.append("no qualified candidate met the latency / size goal and was faster than the "
                     "original")
    return "; ".join(parts) + "; the original model is deployed"


#: per-measurement fields of the simulated accelerator device (accel_device.py)
_SIM_KEYS = ("accel_ms_simulated", "host_ms_measured", "accel_cycles", "latency_kind",
             "layers_on_accel")


def write_report(result, out_dir: str | Path, other_runs: dict[str, list[dict]] | None = None,
                 final: dict | None = None, finetune: dict | None = None,
                 onnxruntime: dict | None = None) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep = build_report(result, final, finetune, onnxruntime)
    try:  # what DIST/ ships (model.so / program.npz + any weight file), from the files
        rep["deployed"] = artifact_size(out).to_json()
    except PfcompileError:
        rep["deployed"] = None
    (out / "report.json").write_text(json.dumps(rep, indent=1))
    runs = dict(other_runs or {})
    runs[result.strategy] = result.trials
    (out / "report.html").write_text(render_html(rep, runs))
    return rep
