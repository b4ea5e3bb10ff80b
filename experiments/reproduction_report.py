"""Tables, verdicts and plots of the toy reproduction (:mod:`experiments.reproduce`).

:func:`build` turns the finished evaluation trials into ``reproduction.json``'s content: every trial's
settings and metrics (with the rollout decay per ``k``-frame block), the trials aggregated over seeds,
and a verdict per claim of the paper computed from those numbers by the rules in :data:`CLAIMS` (with
the tolerances of ``reproduce.yaml``'s ``verdict`` section). :func:`write` renders ``reproduction.md`` in
the layout of the paper's Tables 1–5 and S6 and the PNG plots; the Markdown links the plots as
``reproduction/<name>.png``, so ``reproduction.md`` and the ``reproduction/`` folder can be copied into
``docs/`` as they are.

Comparisons: FVD (lower is better) and generated-token accuracy against the ground truth (higher is
better) are both checked; a difference within the tolerance (or within the spread over seeds) is a tie.

Flowception (no claim of the MaskFlow paper, so no verdict) gets its own section: the generated length
histogram against the real one of the ``flowception_lengths`` model (the supplementary's Figure 11, pooled
over seeds, with their total-variation distance) and the ``flowception`` model's continuation quality next
to MaskFlow's MGM sampler on the frame-level model at about the same NFE, per extrapolation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CLAIMS", "rollout_blocks", "aggregate", "verdicts", "build", "render_markdown", "write", "copy_to_docs",
           "print_summary", "plot_length_histogram"]

FULL = "full"
FIG_DIR = "reproduction"

#: the paper's claims as the issue states them, with the rule each verdict applies
CLAIMS = {
    1: ("Frame-level masking holds quality up to 10× extrapolation where constant masking degrades (§3.3, Table 4).",
        "frame-level vs constant-masking model (MGM, no guidance) at the largest extrapolation, for s = k − m and s = 1: "
        "frame-level better on FVD and on token accuracy"),
    2: ("MGM-style sampling with 20 steps is close to FM-style with 250 at about a tenth of the NFE (Table 1, S6).",
        "at every extrapolation: MGM's FVD at most `close_fvd_rel` above FM's and its token accuracy at most "
        "`close_acc_abs` below; counted NFE ratio MGM/FM at most `nfe_ratio_max`"),
    3: ("Autoregressive sampling (s = 1) improves quality over full-sequence sampling (s = k − m) at a higher NFE (Table 2).",
        "MGM, frame-level model, every extrapolation ≥ 2×: s = 1 better than s = k − m on FVD and on token accuracy"),
    4: ("Partial context guidance improves quality at longer extrapolation (Table 3).",
        "MGM, s = k − m, every extrapolation ≥ 2×: the largest ω of the grid better than ω = 0 on FVD and on token accuracy"),
    5: ("MaskFlow (MGM- and FM-style) outperforms Diffusion Forcing and Rolling Diffusion on the same model (Table 1).",
        "every extrapolation ≥ 2×: MGM and FM each better than Diffusion Forcing and than Rolling Diffusion, "
        "on FVD and on token accuracy"),
    6: ("A timestep-dependent model sampled timestep-independently (MGM, t = 0) does as well as a timestep-independent "
        "model and as FM-style sampling of the dependent model (Table 5).",
        "every extrapolation: the dependent model with t = 0 MGM sampling no worse (better or tie) than the "
        "independent model (MGM) and than the dependent model sampled FM-style, on FVD and on token accuracy"),
}

SAMPLER_NAMES = {"mgm": "MaskFlow (MGM-style)", "fm": "MaskFlow (FM-style)",
                 "diffusion_forcing": "Diffusion Forcing", "rolling": "Rolling Diffusion"}
FLOWCEPTION_NAME = "Flowception"
METRICS = ("fvd", "fvd_n", "token_accuracy", "copy_last_frame_token_accuracy", "foreground_token_accuracy",
           "copy_last_frame_foreground_token_accuracy", "psnr", "copy_last_frame_psnr", "ssim", "copy_last_frame_ssim",
           "nfe", "expected_nfe", "wall_time_s", "wall_time_per_video_s", "num_videos",
           "length_tv", "mean_frames", "real_mean_frames", "scored_videos")  # the last four: Flowception
SETTING_KEYS = ("model", "sampler", "sampling_steps", "extrapolation", "stride", "guidance_scale", "time_conditioning")


# ------------------------------------------------------------------------------------ per trial
def rollout_blocks(per_frame: list[float] | None, chunk_size: int, n_context_frames: int) -> list[float]:
    """Mean of a per-generated-frame curve over the video's ``k``-frame blocks (frames 0…k−1, k…2k−1, …).

    Args:
        per_frame: ``L − m`` values, one per generated frame (video frames ``m … L−1``).
        chunk_size: ``k``.
        n_context_frames: ``m``; the first block holds ``k − m`` generated frames.

    Returns:
        One value per block (``⌈L / k⌉`` of them); ``[]`` for no curve.
    """
    if not per_frame:
        return []
    values = np.asarray(per_frame, dtype=np.float64)
    index = (np.arange(len(values)) + n_context_frames) // chunk_size
    return [float(values[index == b].mean()) for b in range(int(index.max()) + 1)]


def _trial_row(rec: dict[str, Any], k: int, m: int) -> dict[str, Any]:
    met = rec["metrics"]
    row = {**rec["settings"], "key": rec["key"], "name": rec["name"], "seed": rec["settings"]["seed"],
           "claims": rec.get("claims", []), "tables": rec.get("tables", [])}
    for name in METRICS:
        value = met.get(name)
        row[name] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    row["fvd_feature_network"] = met.get("fvd_feature_network")
    # Flowception's NFE is random (the formula gives its expectation): no match to check
    row["nfe_matches_formula"] = None if row["sampler"] == "flowception" else bool(row["nfe"] == row["expected_nfe"])
    if met.get("length_histogram"):
        row["length_histogram"] = met["length_histogram"]
        row["sample_frames"] = met.get("sample_frames")
    row["blocks"] = {
        "token_accuracy": rollout_blocks(met.get("token_accuracy_per_frame"), k, m),
        "copy_last_frame_token_accuracy": rollout_blocks(met.get("copy_last_frame_token_accuracy_per_frame"), k, m),
        "psnr": rollout_blocks(met.get("psnr_per_frame"), k, m),
        "copy_last_frame_psnr": rollout_blocks(met.get("copy_last_frame_psnr_per_frame"), k, m),
        "ssim": rollout_blocks(met.get("ssim_per_frame"), k, m),
    }
    return row


def _setting_id(row: dict[str, Any]) -> tuple:
    return tuple(row[k] for k in SETTING_KEYS)


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials of the same setting (all but the seed) averaged: ``<metric>`` (mean), ``<metric>_std``
    (over seeds, ``nan`` with one seed), ``seeds``, and block curves averaged element-wise."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_setting_id(row), []).append(row)
    out = []
    for rs in groups.values():
        agg = {k: rs[0][k] for k in SETTING_KEYS}
        agg["seeds"] = sorted(r["seed"] for r in rs)
        agg["claims"] = sorted({c for r in rs for c in r["claims"]})
        agg["nfe_matches_formula"] = (None if any(r["nfe_matches_formula"] is None for r in rs)
                                      else all(r["nfe_matches_formula"] for r in rs))
        for name in METRICS:
            vals = np.array([r.get(name, math.nan) for r in rs], dtype=np.float64)
            finite = vals[np.isfinite(vals)]
            agg[name] = float(finite.mean()) if finite.size else math.nan
            agg[f"{name}_std"] = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
        agg["blocks"] = {}
        for name in rs[0]["blocks"]:
            curves = [r["blocks"][name] for r in rs if r["blocks"].get(name)]
            n = min((len(c) for c in curves), default=0)
            agg["blocks"][name] = [float(np.mean([c[i] for c in curves])) for i in range(n)]
        hists = [r["length_histogram"] for r in rs if r.get("length_histogram")]
        if hists:  # Flowception: the generated lengths of every seed pooled, against the (same) real ones
            from experiments.flowception import length_total_variation

            pooled: dict[str, int] = {}
            for h in hists:
                for n_frames, count in h["generated"].items():
                    pooled[n_frames] = pooled.get(n_frames, 0) + int(count)
            pooled = dict(sorted(pooled.items(), key=lambda kv: int(kv[0])))
            agg["length_histogram"] = {"generated": pooled, "real": hists[0]["real"]}
            agg["length_tv"] = length_total_variation(pooled, hists[0]["real"])
        out.append(agg)
    order = {"frame": 0, "constant": 1, "independent": 2, "flowception": 3, "flowception_lengths": 4}
    out.sort(key=lambda a: (order.get(a["model"], 9), str(a["sampler"]), a["extrapolation"], str(a["stride"]),
                            a["guidance_scale"], a["time_conditioning"]))
    return out


class _Lookup:
    def __init__(self, agg: list[dict[str, Any]]):
        self.agg = agg

    def get(self, model="frame", sampler="mgm", ext=1, stride=FULL, w=0.0, tc="dependent") -> dict[str, Any] | None:
        for a in self.agg:
            if (a["model"], a["sampler"], a["extrapolation"], a["stride"], a["guidance_scale"], a["time_conditioning"]) == (
                    model, sampler, ext, stride, float(w), tc):
                return a
        return None


# ------------------------------------------------------------------------------------ verdicts
def _compare(a: dict | None, b: dict | None, metric: str, tol: dict[str, float]) -> int | None:
    """+1: ``a`` better than ``b`` on ``metric`` beyond the tolerance; −1 worse; 0 tie; None: not measured."""
    if a is None or b is None:
        return None
    va, vb = a.get(metric, math.nan), b.get(metric, math.nan)
    if not (math.isfinite(va) and math.isfinite(vb)):
        return None
    diff = (vb - va) if metric == "fvd" else (va - vb)  # > 0: a better
    margin = tol["fvd_rel_tol"] * max(abs(vb), 1e-9) if metric == "fvd" else tol["acc_abs_tol"]
    sa, sb = a.get(f"{metric}_std", math.nan), b.get(f"{metric}_std", math.nan)
    if math.isfinite(sa) and math.isfinite(sb):
        margin = max(margin, math.hypot(sa, sb))
    if abs(diff) <= margin:
        return 0
    return 1 if diff > 0 else -1


def _num(a: dict | None, metric: str, digits: int = 3) -> str:
    if a is None:
        return "–"
    v = a.get(metric, math.nan)
    return "–" if not math.isfinite(v) else f"{v:.{digits}g}" if metric != "fvd" else f"{v:.1f}"


def _check(label: str, a, b, metric: str, tol, want: str = "better") -> dict[str, Any]:
    res = _compare(a, b, metric, tol)
    ok = None if res is None else (res > 0 if want == "better" else res >= 0)
    return {"check": f"{label} [{metric}]", "a": _num(a, metric), "b": _num(b, metric), "result": res, "supports": ok}


def _verdict(checks: list[dict[str, Any]]) -> str:
    measured = [c for c in checks if c["supports"] is not None]
    if not measured:
        return "not measured"
    good = sum(bool(c["supports"]) for c in measured)
    if good == len(measured):
        return "reproduced"
    return "not reproduced" if good == 0 else "partly reproduced"


def verdicts(agg: list[dict[str, Any]], exts: list[int], tol: dict[str, float]) -> dict[int, dict[str, Any]]:
    """A verdict per claim (:data:`CLAIMS`) from the aggregated numbers.

    Returns:
        ``{claim: {"claim", "rule", "verdict" ("reproduced" | "partly reproduced" | "not reproduced" |
        "not measured"), "checks": [{"check", "a", "b", "result", "supports"}, ...], "notes": [str]}}``.
    """
    look = _Lookup(agg)
    top, longer = max(exts), [e for e in exts if e >= 2]
    out: dict[int, dict[str, Any]] = {}
    metrics = ("fvd", "token_accuracy")

    checks, notes = [], []
    for stride in (FULL, 1):
        f, c = look.get("frame", ext=top, stride=stride), look.get("constant", ext=top, stride=stride)
        for metric in metrics:
            checks.append(_check(f"{top}×, s={_stride_label(stride)}: frame-level vs constant", f, c, metric, tol))
    for model in ("frame", "constant"):
        lo, hi = look.get(model, ext=min(exts)), look.get(model, ext=top)
        if lo and hi:
            notes.append(f"{model}: token accuracy {_num(lo, 'token_accuracy')} at {min(exts)}× → {_num(hi, 'token_accuracy')} "
                         f"at {top}× (copy-last-frame {_num(hi, 'copy_last_frame_token_accuracy')}); FVD "
                         f"{_num(lo, 'fvd')} → {_num(hi, 'fvd')}")
    out[1] = {"checks": checks, "notes": notes}

    checks, notes = [], []
    for e in exts:
        mgm, fm = look.get(sampler="mgm", ext=e), look.get(sampler="fm", ext=e)
        if mgm is None or fm is None:
            continue
        for metric, rel, absol in (("fvd", tol["close_fvd_rel"], None), ("token_accuracy", None, tol["close_acc_abs"])):
            va, vb = mgm.get(metric, math.nan), fm.get(metric, math.nan)
            ok = None
            if math.isfinite(va) and math.isfinite(vb):
                ok = va <= vb * (1 + rel) if metric == "fvd" else va >= vb - absol
            checks.append({"check": f"{e}×: MGM close to FM [{metric}]", "a": _num(mgm, metric), "b": _num(fm, metric),
                           "result": None, "supports": ok})
        ratio = mgm["nfe"] / fm["nfe"] if fm["nfe"] else math.nan
        checks.append({"check": f"{e}×: NFE ratio MGM/FM ≤ {tol['nfe_ratio_max']:g}", "a": f"{mgm['nfe']:.0f}",
                       "b": f"{fm['nfe']:.0f}", "result": None,
                       "supports": None if not math.isfinite(ratio) else bool(ratio <= tol["nfe_ratio_max"])})
        notes.append(f"{e}×: NFE {mgm['nfe']:.0f} vs {fm['nfe']:.0f} (ratio {ratio:.3f}); wall time per video "
                     f"{mgm['wall_time_per_video_s']:.2f} vs {fm['wall_time_per_video_s']:.2f} s")
    out[2] = {"checks": checks, "notes": notes}

    checks = []
    for e in longer:
        for metric in metrics:
            checks.append(_check(f"{e}×: s=1 vs s=k−m", look.get(ext=e, stride=1), look.get(ext=e), metric, tol))
    out[3] = {"checks": checks, "notes": [f"{e}×: NFE s=1 {_num(look.get(ext=e, stride=1), 'nfe', 5)} vs s=k−m "
                                          f"{_num(look.get(ext=e), 'nfe', 5)}" for e in longer]}

    checks = []
    ws = sorted({a["guidance_scale"] for a in agg if a["model"] == "frame" and a["sampler"] == "mgm"})
    wmax = max(ws) if ws else 0.0
    if wmax > 0:
        for e in longer:
            for metric in metrics:
                checks.append(_check(f"{e}×: ω={wmax:g} vs ω=0", look.get(ext=e, w=wmax), look.get(ext=e), metric, tol))
    out[4] = {"checks": checks, "notes": [f"1×: ω={wmax:g} vs 0 on FVD: {_num(look.get(ext=1, w=wmax), 'fvd')} vs "
                                          f"{_num(look.get(ext=1), 'fvd')} (the paper sees no gain at 1×)"] if wmax > 0 else []}

    checks = []
    for e in longer:
        for ours in ("mgm", "fm"):
            for base in ("diffusion_forcing", "rolling"):
                for metric in metrics:
                    checks.append(_check(f"{e}×: {ours} vs {base}", look.get(sampler=ours, ext=e),
                                         look.get(sampler=base, ext=e), metric, tol))
    out[5] = {"checks": checks, "notes": []}

    checks = []
    for e in exts:
        ti = look.get(ext=e, tc="independent")
        for label, other in (("independent model (MGM)", look.get("independent", ext=e, tc="independent")),
                             ("dependent model FM-style", look.get(sampler="fm", ext=e))):
            for metric in metrics:
                checks.append(_check(f"{e}×: dependent model, t=0 MGM vs {label}", ti, other, metric, tol, want="no worse"))
    out[6] = {"checks": checks, "notes": []}

    for claim, v in out.items():
        v.update(claim=CLAIMS[claim][0], rule=CLAIMS[claim][1], verdict=_verdict(v["checks"]))
    return out


def _stride_label(stride: Any) -> str:
    return "k−m" if stride == FULL else str(stride)


# ------------------------------------------------------------------------------------ build
def build(*, cfg: dict[str, Any], data: dict[str, Any], models: dict[str, Any], grid: dict[str, Any],
          timings: dict[str, float], machine: dict[str, Any], command: str, tracking_uri: str,
          lengths_data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``reproduction.json`` (see the module docstring); ``lengths_data``: the data of the
    Flowception length-modelling model, when there is one."""
    k, m = int(cfg["chunk_size"]), int(cfg["n_context_frames"])
    rows = [_trial_row(rec, k, m) for rec in grid["trials"]]
    agg = aggregate(rows)
    exts = sorted(int(x) for x in cfg["eval"]["extrapolations"])
    v = verdicts(agg, exts, {k2: float(x) for k2, x in cfg["verdict"].items()})
    return {
        "command": command, "preset": cfg["preset"], "machine": machine, "timings_s": timings,
        "config": cfg, "chunk_size": k, "n_context_frames": m, "full_stride": k - m,
        "data": {key: data.get(key) for key in ("key", "videos", "shards", "num_videos", "manifest_counts", "splits",
                                                "tokenizer_psnr_db", "seconds", "skipped")},
        "lengths_data": None if lengths_data is None else {
            key: lengths_data.get(key) for key in ("key", "videos", "shards", "num_videos", "settings", "manifest_counts",
                                                   "splits", "tokenizer_psnr_db", "seconds", "skipped")},
        "models": models,
        "evaluation": {key: grid[key] for key in ("num_grid", "ran", "skipped", "errors", "missing", "parent_run_id", "seconds")},
        "tracking_uri": tracking_uri,
        "trials": rows, "settings": agg, "verdicts": {str(c): x for c, x in v.items()},
    }


# ------------------------------------------------------------------------------------ markdown
def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float) and v.is_integer() and (abs(v) >= 1 or digits == 0):
        return f"{int(v):,}"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pm(a: dict | None, metric: str, digits: int) -> str:
    if a is None:
        return "–"
    s = _f(a.get(metric, math.nan), digits)
    std = a.get(f"{metric}_std", math.nan)
    return s if s == "–" or not math.isfinite(std) else f"{s} ± {_f(std, digits)}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "_no trials for this table_"
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _quality_cells(a: dict | None, with_copy: bool = True) -> list[str]:
    if a is None:
        return ["–"] * (9 if with_copy else 6)
    cells = [_pm(a, "fvd", 1), _f(a.get("fvd_n"), 0), _pm(a, "token_accuracy", 3)]
    if with_copy:
        cells.append(_f(a.get("copy_last_frame_token_accuracy"), 3))
    cells.append(_f(a.get("foreground_token_accuracy"), 3))
    if with_copy:
        cells.append(_f(a.get("copy_last_frame_foreground_token_accuracy"), 3))
    cells += [_pm(a, "psnr", 2)]
    if with_copy:
        cells.append(_f(a.get("copy_last_frame_psnr"), 2))
    cells.append(_f(a.get("ssim"), 3))
    return cells


def _model_label(model: dict[str, Any]) -> str:
    if model.get("dynamics") == "flowception":
        data = "sprite videos of several lengths" if model.get("data") == "lengths" else "the same videos"
        return f"Flowception (dynamics=flowception, frame insertion) on {data}"
    return f"{model['masking']} masking, time {model['time_conditioning']}"


def _tv(a: dict[str, Any]) -> str:
    """The length histograms' total-variation distance with 3 decimals (``–`` when not measured)."""
    v = a.get("length_tv", math.nan)
    return f"{v:.3f}" if isinstance(v, (int, float)) and math.isfinite(v) else "–"


def _flowception_section(result: dict[str, Any], look: "_Lookup", exts: list[int]) -> list[str]:
    """The Flowception section of ``reproduction.md`` (``[]`` without Flowception trials)."""
    fc = [a for a in result["settings"] if a["sampler"] == "flowception"]
    if not fc:
        return []
    cfg, k, m = result["config"], result["chunk_size"], result["n_context_frames"]
    steps = cfg["eval"]["sampling_steps"]
    p = ["## Flowception — length modelling and quality against MaskFlow at about the same NFE", "",
         "Flowception (docs/flowception.md) generates each video's length by inserting fully masked frames while "
         "the present ones are unmasked. No claim of the MaskFlow paper, so no verdict: the numbers as measured. "
         f"Its trials continue whole held-out videos from their first m = {m} frames up to L = extrapolation × k "
         "frames; quality is scored over the frames the generated and the real video both have (FVD on the clips "
         f"of at least 9 frames, each at its own length). Sampling: {steps.get('flowception')} steps per frame "
         "(a window takes S to 2S passes), Bernoulli insertion, FM-style unmasking.", ""]
    lengths = [a for a in fc if a.get("length_histogram")]
    for a in lengths:
        if a["model"] != "flowception_lengths":
            continue
        hist = a["length_histogram"]
        keys = sorted({int(x) for x in hist["real"]} | {int(x) for x in hist["generated"]})
        real_total, gen_total = sum(hist["real"].values()), sum(hist["generated"].values())
        rows = [[label, *[_f(h.get(str(n), 0) / total, 2) if total else "–" for n in keys], _f(mean, 2), str(total)]
                for label, h, total, mean in (("real (all videos, train and held-out)", hist["real"], real_total,
                                               a.get("real_mean_frames")),
                                              ("generated", hist["generated"], gen_total, a.get("mean_frames")))]
        data = result.get("lengths_data") or {}
        shown = (data.get("settings") or {}).get("lengths") or cfg.get("lengths_data", {}).get("lengths")
        p += [f"### Length histogram (the supplementary's Figure 11) — `{a['model']}`, {a['extrapolation']}× (at most "
              f"{a['extrapolation'] * k} frames)", "",
              f"Sprite videos of {', '.join(map(str, shown or []))} frames; the generated lengths of "
              f"{gen_total} continuations (seeds {', '.join(map(str, a['seeds']))} pooled) against the lengths of "
              f"every rendered video. Total-variation distance **{_tv(a)}** (0 = the same "
              f"distribution, 1 = disjoint). Share of videos per length:", "",
              _table(["lengths", *[str(n) for n in keys], "mean", "videos"], rows), "",
              f"NFE {_f(a['nfe'])} per batch (expectation for full windows {_f(a['expected_nfe'])}); quality of the "
              f"continuations: token accuracy {_pm(a, 'token_accuracy', 3)} (copy-last-frame "
              f"{_f(a.get('copy_last_frame_token_accuracy'), 3)}), PSNR {_pm(a, 'psnr', 2)} dB.", ""]
    rows = []
    for e in exts:
        for label, a in (("MaskFlow (MGM-style), frame-level model", look.get(ext=e)),
                         (f"{FLOWCEPTION_NAME}, `flowception` model", look.get("flowception", "flowception", ext=e))):
            if a is not None:
                rows.append([label, f"{e}×", *_nfe_cells(a), _f(a.get("mean_frames"), 1) if a["sampler"] == "flowception"
                             else _f(float(e * k)), *_quality_cells(a)])
    p += ["### Continuation quality against MaskFlow at about the same NFE", "",
          f"MGM: {steps['mgm']} passes per chunk; Flowception: {steps.get('flowception')} steps per frame. "
          "Generated frames: the mean video length (context included).", "",
          _table(["Sampling mode", "Extrapolation", "Total NFE", "A.2 formula", "frames", *QUALITY_HEAD], rows), ""]
    if any(a.get("length_histogram") for a in result["settings"]):
        p += [f"![generated against real length histogram]({FIG_DIR}/length_histogram.png)", ""]
    return p


def _val_accuracy(model: dict[str, Any]) -> float | None:
    final = model.get("final_metrics") or {}
    return final.get("val_masked_accuracy", final.get("val/masked_accuracy"))


QUALITY_HEAD = ["FVD ↓", "N", "token acc. ↑", "copy-last acc.", "fg. acc. ↑", "copy-last fg.", "PSNR dB ↑",
                "copy-last PSNR", "SSIM ↑"]


def _nfe_cells(a: dict | None) -> list[str]:
    if a is None:
        return ["–", "–"]
    if a["nfe_matches_formula"] is None:  # Flowception: a random count, the formula its expectation
        return [_f(a["nfe"]), f"E ≈ {_f(a['expected_nfe'])}"]
    ok = "" if a["nfe_matches_formula"] else " ≠"
    return [_f(a["nfe"]), _f(a["expected_nfe"]) + ok]


def render_markdown(result: dict[str, Any]) -> str:
    """``reproduction.md``: the setup, Tables 1–5 and S6 in the paper's layout, the rollout decay, the plots
    and a verdict per claim, every number from ``result`` (:func:`build`)."""
    look = _Lookup(result["settings"])
    cfg, k, m = result["config"], result["chunk_size"], result["n_context_frames"]
    exts = sorted(int(x) for x in cfg["eval"]["extrapolations"])
    top, steps = max(exts), cfg["eval"]["sampling_steps"]
    ev, tm = result["evaluation"], result["timings_s"]
    mach = result["machine"]
    seeds = cfg["eval"]["seeds"]
    counts = result["data"].get("manifest_counts") or {}
    splits = result["data"].get("splits") or {}
    p: list[str] = ["# MaskFlow: toy reproduction of the paper's claims", ""]
    p += [f"Command: `{result['command']}` (preset `{result['preset']}`).", "",
          f"Machine: {mach.get('cpu_count')} CPU cores{', GPU ' + mach['gpu'] if mach.get('gpu') else ', no GPU'}, "
          f"{mach.get('platform')}, Python {mach.get('python')}, torch {mach.get('torch')}.", "",
          f"Wall time of the run that wrote this report: {tm['total_s']:.0f} s (data {tm['data_s']:.0f} s, training "
          f"{tm['train_s']:.0f} s, evaluation grid {tm['evaluate_s']:.0f} s, strip {tm['strip_s']:.0f} s); "
          f"{ev['skipped']} of {ev['num_grid']} evaluation trials and "
          f"{sum(bool(x.get('skipped')) for x in result['models'].values())} of {len(result['models'])} trainings were "
          f"finished by an earlier run and reused.", ""]
    if ev["errors"] or ev["missing"]:
        p += [f"**{len(ev['errors'])} trial(s) failed; missing from the tables: {', '.join(ev['missing']) or 'none'}.**", ""]
    d, t = cfg["data"], cfg["train"]
    source = (f"{result['data'].get('num_videos')} videos from `{d['videos']}`" if d.get("videos") else
              f"{d['num_videos']} rendered videos of moving sprites (`motion={d['motion']}`, shared palette, "
              f"constant velocities, bouncing off the borders: a deterministic ground truth), {top * k} frames each")
    tok = (f"the CPU patch-k-means tokenizer (K = {d['codebook_size']}, patch {d['patch_size']}: "
           f"{d['resolution'] // d['patch_size']}×{d['resolution'] // d['patch_size']} tokens per frame"
           if d.get("tokenizer_kind", "patch_kmeans") == "patch_kmeans" else f"the `{d['tokenizer_kind']}` tokenizer")
    p += ["## Setup", "",
          f"- **Data**: {source} at {d['resolution']}×{d['resolution']} px, tokenized by the Ray Data pipeline with "
          f"{tok}; reconstruction PSNR {_f(result['data'].get('tokenizer_psnr_db'), 1)} dB); whole videos held out "
          f"(`split=video`: {splits.get('eval', {}).get('videos', '?')} held-out, {splits.get('train', {}).get('videos', '?')} "
          f"training videos; {counts.get('videos_ok', '?')} tokenized).",
          f"- **Models** (Ray Train, the same budget each: {t['max_steps']} steps × {t['batch_size_per_worker']} windows × "
          f"{t['num_workers']} workers, `{t['model_size']}` backbone, k = {k}, lr {t['lr']} {t['lr_decay']}, up to "
          f"{t['max_context_frames']} clean leading frames): "
          + "; ".join(f"`{n}` = {_model_label(x)} (final masked CE "
                      f"{_f(x.get('final_loss'), 3)}, validation masked accuracy "
                      f"{_f(_val_accuracy(x), 3)})" for n, x in result["models"].items()) + ".",
          f"- **Evaluation** (Ray Tune, MLflow parent run `{ev['parent_run_id']}` with one child run per trial): "
          f"{ev['num_grid']} trials = the pruned grid of `experiments/configs/reproduce.yaml` × seeds {seeds}; each "
          f"trial continues N = {cfg['eval']['num_videos']} held-out clips from m = {m} real frames to L = extrapolation × k "
          f"frames (a seed picks the clips and the sampler's randomness; every setting sees the same clips for a "
          f"seed). Sampling steps: MGM {steps['mgm']}, FM {steps['fm']}, Diffusion Forcing and Rolling Diffusion "
          f"{steps['diffusion_forcing']} / {steps['rolling']} levels. s = k − m = {k - m} is full-sequence mode, s = 1 "
          f"autoregressive (after the first chunk, k − 1 generated frames of context).",
          "- **Metrics**: FVD (bundled Kinetics-400 I3D, one feature per L-frame clip, N clips; `–` where L < 9 "
          "frames), generated-token accuracy, PSNR and SSIM against the ground-truth continuation (frames m … L−1), "
          "the copy-last-frame baseline on the same clips, NFE counted by the sampler (per video) beside the A.2 "
          "formula (`≠` marks a mismatch), wall time. fg. acc. is the token accuracy on the positions whose real "
          "code is not the clip's background code (the moving sprites; plain token accuracy is mostly background). "
          "Values are means over seeds, ± the standard deviation over seeds where there are several.",
          "- **Pruning**: each grid group is the slice one table or claim reads; FM, Diffusion Forcing and "
          "Rolling Diffusion run only full-sequence and unguided (their s = 1 or guided variants cost up to "
          f"{k - 1}× / 3× more and no claim reads them); s = 1 and guidance run with MGM on the frame-level model; "
          "the constant-masking model runs MGM at both strides and FM at 1×; at 1× the stride is irrelevant (one chunk).",
          ""]

    p += ["## Verdicts", ""]
    for c in sorted(result["verdicts"], key=int):
        v = result["verdicts"][c]
        p += [f"**({c}) {v['claim']}** — **{v['verdict']}**.", "", f"Rule: {v['rule']}.", ""]
        if v["checks"]:
            p += [_table(["check", "value", "against", "supports"],
                         [[x["check"], x["a"], x["b"], {True: "yes", False: "no", None: "not measured"}[x["supports"]]]
                          for x in v["checks"]]), ""]
        for note in v["notes"]:
            p.append(f"- {note}")
        p.append("")

    rows = []
    for e in exts:
        for s in ("diffusion_forcing", "rolling", "fm", "mgm"):
            a = look.get(sampler=s, ext=e)
            if a is not None:
                rows.append([SAMPLER_NAMES[s], f"{e}×", *_nfe_cells(a), *_quality_cells(a)])
    p += ["## Table 1 layout — samplers across extrapolation (frame-level model, s = k − m, ω = 0)", "",
          _table(["Sampling mode", "Extrapolation", "Total NFE", "A.2 formula", *QUALITY_HEAD], rows), ""]

    rows = []
    for e in exts:
        for s in (FULL, 1):
            a = look.get(ext=e, stride=s)
            if a is not None:
                rows.append([f"{e}×", f"s = {k - m if s == FULL else 1}" + (" (full sequence)" if s == FULL else " (autoregressive)"),
                             *_nfe_cells(a), *_quality_cells(a)])
    p += ["## Table 2 layout — sampling stride (MGM, frame-level model)", "",
          _table(["Extrapolation", "Stride", "Total NFE", "A.2 formula", *QUALITY_HEAD], rows), ""]

    rows = []
    ws = sorted({a["guidance_scale"] for a in result["settings"] if a["model"] == "frame" and a["sampler"] == "mgm"})
    for e in exts:
        for w in ws:
            a = look.get(ext=e, w=w)
            if a is not None:
                rows.append([f"{e}×", f"{w:g}", *_nfe_cells(a), *_quality_cells(a, with_copy=False)])
    p += ["## Table 3 layout — partial context guidance ω (MGM, s = k − m, frame-level model)", "",
          _table(["Extrapolation", "Guidance ω", "Total NFE", "A.2 formula", "FVD ↓", "N", "token acc. ↑", "fg. acc. ↑",
                  "PSNR dB ↑", "SSIM ↑"],
                 rows), ""]

    rows = []
    for e in exts:
        for model, sampler, label in (("constant", "fm", "Constant masking"), ("constant", "mgm", "Constant masking"),
                                      ("frame", "diffusion_forcing", "Frame-level masking"), ("frame", "rolling", "Frame-level masking"),
                                      ("frame", "mgm", "Frame-level masking"), ("frame", "fm", "Frame-level masking")):
            a = look.get(model, sampler, ext=e)
            if a is not None and (e == min(exts) or model == "constant" or sampler == "mgm"):
                rows.append([label, SAMPLER_NAMES[sampler], f"{e}×", _f(a["nfe"]), *_quality_cells(a)])
    for e in exts:
        a = look.get("constant", ext=e, stride=1)
        if a is not None:
            rows.append(["Constant masking", "MaskFlow (MGM-style), s = 1", f"{e}×", _f(a["nfe"]), *_quality_cells(a)])
        a = look.get("frame", ext=e, stride=1)
        if a is not None:
            rows.append(["Frame-level masking", "MaskFlow (MGM-style), s = 1", f"{e}×", _f(a["nfe"]), *_quality_cells(a)])
    p += ["## Table 4 layout — frame-level against constant masking (1× as in the paper, then longer rollouts)", "",
          _table(["Training mode", "Sampling mode", "Extrapolation", "NFE", *QUALITY_HEAD], rows), ""]

    rows = []
    for e in exts:
        for model, sampler, tc, dep, ind in (("frame", "fm", "dependent", "✓", "✗"), ("independent", "mgm", "independent", "✗", "✓"),
                                             ("frame", "mgm", "independent", "✓", "✓"), ("frame", "mgm", "dependent", "✓", "✗")):
            a = look.get(model, sampler, ext=e, tc=tc)
            if a is not None:
                rows.append([SAMPLER_NAMES[sampler].split(" ")[1].strip("()"), dep, ind, f"{e}×", _f(a["nfe"]),
                             *_quality_cells(a, with_copy=False)])
    p += ["## Table 5 layout — timestep-dependent and -independent models and sampling (s = k − m)", "",
          "Model time dep. ✓ = trained with per-frame t; sampling time indep. ✓ = sampled with t = 0 (eq. 8).", "",
          _table(["Sampling mode", "Model time dep.", "Sampling time indep.", "Extrapolation", "NFE", "FVD ↓", "N",
                  "token acc. ↑", "fg. acc. ↑", "PSNR dB ↑", "SSIM ↑"], rows), ""]

    rows = []
    for e in exts:
        for s, stride in (("diffusion_forcing", FULL), ("rolling", FULL), ("fm", FULL), ("mgm", FULL), ("mgm", 1)):
            a = look.get(sampler=s, ext=e, stride=stride)
            if a is not None:
                rows.append([SAMPLER_NAMES[s], "s = k − m" if stride == FULL else "s = 1", f"{e}×", *_nfe_cells(a),
                             _f(a["wall_time_per_video_s"], 3), _f(a["wall_time_s"], 2), _pm(a, "fvd", 1), _pm(a, "token_accuracy", 3)])
    p += ["## Table S6 layout — NFE, sampling time and quality (frame-level model, ω = 0)", "",
          f"Time: wall-clock seconds of sampling (per video, and for the N = {cfg['eval']['num_videos']} videos in batches "
          f"of {cfg['eval']['batch_size']}) on this machine, one trial per CPU core.", "",
          _table(["Sampling mode", "Stride", "Extrapolation", "Total NFE", "A.2 formula", "Time / video (s)", "Time (s)",
                  "FVD ↓", "token acc. ↑"], rows), ""]

    rows = []
    for label, a in (("frame-level, MGM, s = k − m", look.get(ext=top)), ("constant, MGM, s = k − m", look.get("constant", ext=top)),
                     ("frame-level, MGM, s = 1", look.get(ext=top, stride=1)), ("constant, MGM, s = 1", look.get("constant", ext=top, stride=1)),
                     ("frame-level, FM, s = k − m", look.get(sampler="fm", ext=top)),
                     ("frame-level, Diffusion Forcing", look.get(sampler="diffusion_forcing", ext=top)),
                     ("frame-level, Rolling Diffusion", look.get(sampler="rolling", ext=top))):
        if a is not None and a["blocks"].get("token_accuracy"):
            b = a["blocks"]
            rows.append([label, " / ".join(_f(x, 2) for x in b["token_accuracy"]),
                         " / ".join(_f(x, 2) for x in b["copy_last_frame_token_accuracy"]),
                         " / ".join(_f(x, 1) for x in b["psnr"]), " / ".join(_f(x, 2) for x in b["ssim"])])
    p += [f"## Rollout decay at {top}× — quality of frames 1…k, k+1…2k, … (block means)", "",
          f"The first block holds the k − m = {k - m} generated frames after the context.", "",
          _table(["model, sampler", "token accuracy per block", "copy-last-frame", "PSNR dB per block", "SSIM per block"], rows), ""]

    p += _flowception_section(result, look, exts)

    p += ["## Plots", "",
          f"![quality against extrapolation]({FIG_DIR}/quality_vs_extrapolation.png)", "",
          f"![quality against NFE]({FIG_DIR}/quality_vs_nfe.png)", "",
          f"![rollout decay]({FIG_DIR}/rollout_decay.png)", "",
          f"![generated frames against the ground truth]({FIG_DIR}/rollout_strip.png)", "",
          f"The strip: the first held-out clip of seed {seeds[0]}, frame-level model, MGM, s = k − m, ω = 0 (the grid "
          f"trial's own first video); the first m = {m} frames are the real context.", "",
          f"Every trial's settings and metrics (per-frame curves included): `{FIG_DIR}/reproduction.json`.", ""]
    return "\n".join(p)


# ------------------------------------------------------------------------------------ plots
def _save(fig, path: Path) -> Path:
    """Lay out, write and close a figure; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


SERIES = (  # label, lookup kwargs
    ("frame · MGM", {}), ("frame · FM", {"sampler": "fm"}), ("frame · Diffusion Forcing", {"sampler": "diffusion_forcing"}),
    ("frame · Rolling", {"sampler": "rolling"}), ("constant · MGM", {"model": "constant"}),
    ("frame · MGM s=1", {"stride": 1}), ("constant · MGM s=1", {"model": "constant", "stride": 1}),
    ("frame · MGM ω=2", {"w": 2.0}), ("frame · MGM t=0", {"tc": "independent"}),
    ("independent · MGM", {"model": "independent", "tc": "independent"}),
)


def plot_quality_vs_extrapolation(result: dict[str, Any], path: Path) -> Path:
    """FVD, token accuracy and PSNR against the extrapolation factor, one line per method."""
    plt = _plt()
    look, exts = _Lookup(result["settings"]), sorted(int(x) for x in result["config"]["eval"]["extrapolations"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=110)
    for ax, metric, title in zip(axes, ("fvd", "token_accuracy", "psnr"), ("FVD ↓", "token accuracy ↑", "PSNR (dB) ↑")):
        for label, kw in SERIES:
            pts = [(e, a[metric]) for e in exts if (a := look.get(ext=e, **kw)) is not None and math.isfinite(a[metric])]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label, linestyle="--" if "constant" in label else "-")
        if metric != "fvd":
            copy = [(e, a[f"copy_last_frame_{metric}"]) for e in exts if (a := look.get(ext=e)) is not None]
            if copy:
                ax.plot(*zip(*copy), color="black", linestyle=":", label="copy last frame")
        ax.set_xscale("log")
        ax.set_xticks(exts, [f"{e}×" for e in exts])
        ax.set_xlabel("extrapolation (L / k)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_quality_vs_nfe(result: dict[str, Any], path: Path) -> Path:
    """FVD and token accuracy against the counted NFE, one colour per sampler (frame-level model, ω = 0)."""
    plt = _plt()
    import matplotlib.ticker
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    rows = [a for a in result["settings"] if a["model"] == "frame" and a["guidance_scale"] == 0 and a["time_conditioning"] == "dependent"]
    for ax, metric, title in zip(axes, ("fvd", "token_accuracy"), ("FVD ↓", "token accuracy ↑")):
        for sampler, name in SAMPLER_NAMES.items():
            for stride, marker in ((FULL, "o"), (1, "s")):
                pts = sorted((a["nfe"], a[metric], a["extrapolation"]) for a in rows
                             if a["sampler"] == sampler and a["stride"] == stride and math.isfinite(a[metric]))
                if not pts:
                    continue
                line = ax.plot([x[0] for x in pts], [x[1] for x in pts], marker=marker,
                               label=name + (" s=1" if stride == 1 else ""), linestyle="-" if stride == FULL else ":")
                for x, y, e in pts:
                    ax.annotate(f"{e}×", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points", color=line[0].get_color())
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_xlabel("total NFE per video (counted, log)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_rollout_decay(result: dict[str, Any], path: Path) -> Path:
    """Token accuracy and PSNR per k-frame block at the largest extrapolation, with the copy baseline."""
    plt = _plt()
    look = _Lookup(result["settings"])
    top = max(int(x) for x in result["config"]["eval"]["extrapolations"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for ax, metric, title in zip(axes, ("token_accuracy", "psnr"), ("token accuracy ↑", "PSNR (dB) ↑")):
        copy_drawn = False
        for label, kw in SERIES[:7]:
            a = look.get(ext=top, **kw)
            if a is None or not a["blocks"].get(metric):
                continue
            ys = a["blocks"][metric]
            ax.plot(range(1, len(ys) + 1), ys, marker="o", label=label, linestyle="--" if "constant" in label else "-")
            if not copy_drawn:
                cs = a["blocks"][f"copy_last_frame_{metric}"]
                ax.plot(range(1, len(cs) + 1), cs, color="black", linestyle=":", label="copy last frame")
                copy_drawn = True
        ax.set_xlabel(f"k-frame block of the {top}× rollout")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_strip(strips: dict[int, dict[str, np.ndarray]], m: int, k: int, path: Path, max_columns: int = 16) -> Path | None:
    """Rows of real and generated frames at each extrapolation of ``strips`` (frame indices above them)."""
    if not strips:
        return None
    plt = _plt()
    rows = []
    for ext in sorted(strips):
        real, fake = strips[ext]["real"], strips[ext]["fake"]
        n = real.shape[0]
        idx = list(range(n)) if n <= max_columns else sorted(set(np.linspace(0, n - 1, max_columns).round().astype(int)) | set(range(m)))
        rows += [(f"{ext}× real", real, idx), (f"{ext}× generated", fake, idx)]
    cols = max(len(r[2]) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 0.9, len(rows) * 1.05), dpi=110, squeeze=False)
    for r, (label, frames, idx) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(idx):
                ax.imshow(frames[idx[c]], interpolation="nearest")
                ax.set_title(f"f{idx[c]}" + (" ctx" if idx[c] < m else ""), fontsize=6, color="red" if idx[c] < m else "black")
        axes[r][0].text(-0.1, 0.5, label, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=7)
    fig.subplots_adjust(left=0.09, right=0.99, wspace=0.05, hspace=0.35)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_length_histogram(result: dict[str, Any], path: Path) -> Path | None:
    """Share of videos per length, real against generated, one panel per Flowception setting with a
    length histogram (the supplementary's Figure 11); ``None`` without one."""
    rows = [a for a in result["settings"] if a.get("length_histogram")]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(rows), figsize=(5.5 * len(rows), 3.8), dpi=110, squeeze=False)
    for ax, a in zip(axes[0], rows):
        hist = a["length_histogram"]
        keys = sorted({int(x) for x in hist["real"]} | {int(x) for x in hist["generated"]})
        for shift, (label, h) in zip((-0.2, 0.2), (("real", hist["real"]), ("generated", hist["generated"]))):
            total = max(1, sum(h.values()))
            ax.bar([n + shift for n in keys], [h.get(str(n), 0) / total for n in keys], width=0.4, label=label)
        ax.set_xticks(keys)
        ax.set_xlabel("video length (frames)")
        ax.set_ylabel("share of videos")
        ax.set_title(f"{a['model']}, {a['extrapolation']}×: TV {_tv(a)}")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


# ------------------------------------------------------------------------------------ output
def write(result: dict[str, Any], out: Path, strips: dict[int, dict[str, np.ndarray]]) -> dict[str, Path]:
    """Write ``reproduction.json``, ``reproduction.md`` and the PNGs into ``out`` (PNGs and a copy of the JSON
    under ``out/reproduction/``); returns the paths."""
    figs = out / FIG_DIR
    figs.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1, default=str, allow_nan=True)
    paths = {"json": out / "reproduction.json"}
    paths["json"].write_text(text)
    (figs / "reproduction.json").write_text(text)
    paths["quality_vs_extrapolation"] = plot_quality_vs_extrapolation(result, figs / "quality_vs_extrapolation.png")
    paths["quality_vs_nfe"] = plot_quality_vs_nfe(result, figs / "quality_vs_nfe.png")
    paths["rollout_decay"] = plot_rollout_decay(result, figs / "rollout_decay.png")
    lengths = plot_length_histogram(result, figs / "length_histogram.png")
    if lengths is not None:
        paths["length_histogram"] = lengths
    strip = plot_strip(strips, result["n_context_frames"], result["chunk_size"], figs / "rollout_strip.png")
    if strip is not None:
        paths["rollout_strip"] = strip
    paths["markdown"] = out / "reproduction.md"
    paths["markdown"].write_text(render_markdown(result))
    return paths


def copy_to_docs(out: Path, docs: Path) -> dict[str, Path]:
    """Copy ``out/reproduction.md`` and ``out/reproduction/`` into ``docs`` (the links stay valid)."""
    import shutil

    docs.mkdir(parents=True, exist_ok=True)
    shutil.copytree(out / FIG_DIR, docs / FIG_DIR, dirs_exist_ok=True)
    shutil.copy2(out / "reproduction.md", docs / "reproduction.md")
    return {"docs_markdown": docs / "reproduction.md"}


def print_summary(result: dict[str, Any], paths: dict[str, Path]) -> None:
    """The verdicts and where the report is, on stdout."""
    ev, tm = result["evaluation"], result["timings_s"]
    lines = ["", f"MaskFlow toy reproduction ({result['preset']}) finished in {tm['total_s']:.0f} s: "
                 f"{ev['ran']} trials run, {ev['skipped']} reused, {len(ev['errors'])} failed "
                 f"(data {tm['data_s']:.0f} s, training {tm['train_s']:.0f} s, evaluation {tm['evaluate_s']:.0f} s)"]
    for c in sorted(result["verdicts"], key=int):
        v = result["verdicts"][c]
        lines.append(f"  ({c}) {v['verdict']:<18} {v['claim']}")
    for a in result["settings"]:
        if a["sampler"] == "flowception":
            lines.append(f"  Flowception ({a['model']}, {a['extrapolation']}x): mean length {_f(a.get('mean_frames'), 2)} "
                         f"(real {_f(a.get('real_mean_frames'), 2)}), length TV {_tv(a)}, NFE "
                         f"{_f(a['nfe'])}, token accuracy {_f(a.get('token_accuracy'), 3)}")
    lines += [f"  report  {paths['markdown']}", f"  json    {paths['json']}"]
    print("\n".join(lines), flush=True)
