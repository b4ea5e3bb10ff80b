"""Paper-style tables from a sweep's MLflow runs: Tables 1, 2, 3 and S6, and quality against NFE.

    python -m experiments.report parent_run_id=RUN_ID            # the sweep's parent run
    python -m experiments.report experiment=maskflow-sweep        # every evaluation run of an experiment

Reads the runs back with ``mlflow.search_runs`` and writes ``report.md`` (Markdown tables) and the
figures ``quality_vs_nfe.png``, ``quality_vs_stride.png`` and ``quality_vs_guidance.png`` (each when
its setting was swept) into ``out_dir``, and logs them as artifacts of the parent run when given.
Quality is FVD (lower is better) where the runs have it, else mean PSNR of the continuation (higher
is better); every FVD is shown with its sample count N.

- Table 1 layout: sampler × extrapolation → total NFE, quality (full-sequence stride ``s = k − m``).
- Table 2 layout: extrapolation × stride → total NFE, quality (MGM).
- Table 3 layout: extrapolation × guidance ω → quality.
- Table S6 layout: sampler × extrapolation → NFE, sampling wall time (s), quality.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from maskflow.sampling.config import FLOWCEPTION_SETTINGS, SamplerConfig


log = logging.getLogger("experiments.report")

__all__ = ["main", "load_runs", "render_markdown", "plot_quality", "plot_quality_vs_nfe", "FIGURES"]


def load_runs(tracking_uri: str | None, parent_run_id: str | None = None, experiment: str | None = None) -> pd.DataFrame:
    """Finished evaluation runs as a DataFrame with columns ``sampler, extrapolation, stride, guidance_scale,
    sampling_steps, time_conditioning, nfe, wall_time_s, fvd, fvd_num_videos, psnr, ssim, status, run_id``,
    Flowception's settings (:data:`maskflow.sampling.config.FLOWCEPTION_SETTINGS`) and ``token_accuracy,
    copy_last_frame_token_accuracy, length_tv, mean_frames, real_mean_frames`` (NaN where not logged).

    Raises:
        ValueError: if neither a parent run nor an experiment is given, or the experiment is unknown.
    """
    import mlflow

    from experiments import tracking

    client = tracking.get_client(tracking_uri)
    if parent_run_id:
        exp_ids = [client.get_run(parent_run_id).info.experiment_id]
        filt = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    elif experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ValueError(f"no MLflow experiment named {experiment!r}")
        exp_ids, filt = [exp.experiment_id], "tags.stage = 'evaluate'"
    else:
        raise ValueError("give parent_run_id= or experiment=")
    df = mlflow.search_runs(experiment_ids=exp_ids, filter_string=filt, max_results=50000)
    if df.empty:
        return df
    out = pd.DataFrame({"run_id": df["run_id"], "status": df["status"]})
    numeric = [k for k in FLOWCEPTION_SETTINGS if isinstance(getattr(SamplerConfig(), k), (int, float))]
    for col in ("sampler", "time_conditioning", *(k for k in FLOWCEPTION_SETTINGS if k not in numeric)):
        out[col] = df.get(f"params.{col}")
    for col in ("extrapolation", "guidance_scale", "sampling_steps", *numeric):
        out[col] = pd.to_numeric(df.get(f"params.{col}"), errors="coerce")
    for col in ("nfe", "expected_nfe", "wall_time_s", "fvd", "fvd_num_videos", "psnr", "ssim", "stride_effective",
                "num_videos", "token_accuracy", "copy_last_frame_token_accuracy", "length_tv", "mean_frames",
                "real_mean_frames"):
        key = f"metrics.eval/{col}"  # experiments.evaluate logs under eval/
        out[col] = pd.to_numeric(df[key], errors="coerce") if key in df else float("nan")
    out["stride"] = out["stride_effective"]
    return out


def _quality(df: pd.DataFrame) -> tuple[str, str]:
    if "fvd" in df and df["fvd"].notna().any():
        return "fvd", "FVD ↓"
    return "psnr", "PSNR (dB) ↑"


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "–"
    if isinstance(v, float) and v.is_integer():
        return f"{int(v):,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def _table(df: pd.DataFrame, cols: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in cols) + " |"
    sep = "| " + " | ".join("---" for _ in cols) + " |"
    rows = ["| " + " | ".join(_fmt(r[c]) for c, _ in cols) + " |" for _, r in df.iterrows()]
    return "\n".join([head, sep, *rows]) if rows else "_no runs for this table_"


def _agg(df: pd.DataFrame, keys: list[str], q: str, means: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per ``keys`` setting: means over seeds of NFE, wall time, quality ``q`` and ``means``."""
    if df.empty:
        return df
    g = df.groupby(keys, dropna=False)
    out = g.agg(nfe=("nfe", "mean"), wall_time_s=("wall_time_s", "mean"), quality=(q, "mean"),
                n=("num_videos", "max"), seeds=("run_id", "count"), **{c: (c, "mean") for c in means}).reset_index()
    return out.sort_values(keys)


def render_markdown(df: pd.DataFrame) -> str:
    """The four tables as Markdown (mean over seeds where a setting was run more than once)."""
    ok = df[df["status"] == "FINISHED"] if not df.empty else df
    failed = 0 if df.empty else int((df["status"] != "FINISHED").sum())
    q, qtitle = _quality(ok) if not ok.empty else ("psnr", "PSNR (dB) ↑")
    if not ok.empty:
        ok = ok.assign(guidance_scale=ok["guidance_scale"].fillna(0.0))
    flowception = ok[ok["sampler"] == "flowception"] if not ok.empty else ok
    ok = ok[ok["sampler"] != "flowception"] if not ok.empty else ok  # Flowception settings get their own table
    full = ok if ok.empty else ok[ok["stride"] == ok.groupby("sampler")["stride"].transform("max")]
    parts = ["# MaskFlow sweep report", "",
             f"{len(ok) + len(flowception)} finished evaluation runs" + (f", {failed} failed" if failed else "") +
             f". Quality: {qtitle}; N = videos per setting.", ""]
    t1 = _agg(full[full["guidance_scale"] == 0] if not full.empty else full, ["sampler", "extrapolation"], q)
    parts += ["## Table 1 layout — samplers across extrapolation (full sequence, s = k − m)", "",
              _table(t1, [("sampler", "Sampling mode"), ("extrapolation", "Extrapolation ×"), ("nfe", "Total NFE"),
                          ("quality", qtitle), ("n", "N")]), ""]
    mgm = ok[ok["sampler"] == "mgm"] if not ok.empty else ok
    t2 = _agg(mgm[mgm["guidance_scale"] == 0] if not mgm.empty else mgm, ["extrapolation", "stride"], q)
    parts += ["## Table 2 layout — sampling stride (MGM)", "",
              _table(t2, [("extrapolation", "Extrapolation ×"), ("stride", "Stride s"), ("nfe", "Total NFE"),
                          ("quality", qtitle), ("n", "N")]), ""]
    t3 = _agg(full[full["sampler"] == "mgm"] if not full.empty else full, ["extrapolation", "guidance_scale"], q)
    parts += ["## Table 3 layout — partial context guidance ω (MGM, s = k − m)", "",
              _table(t3, [("extrapolation", "Extrapolation ×"), ("guidance_scale", "Guidance ω"), ("nfe", "Total NFE"),
                          ("quality", qtitle), ("n", "N")]), ""]
    t6 = _agg(ok, ["sampler", "extrapolation", "stride"], q)
    parts += ["## Table S6 layout — NFE, wall time and quality", "",
              _table(t6, [("sampler", "Sampling mode"), ("extrapolation", "Extrapolation ×"), ("stride", "Stride s"),
                          ("nfe", "Total NFE"), ("wall_time_s", "Time (s)"), ("quality", qtitle), ("n", "N")]), ""]
    if not flowception.empty:
        parts += ["## Flowception — insertion settings, generated lengths and quality", "",
                  "One row per setting (mean over seeds). Length TV: total-variation distance between the generated "
                  "and the real length histograms (0 = the same); token accuracy over the frames the generated and "
                  "the real video both have.", "",
                  _table(_agg(flowception, ["extrapolation", "sampling_steps", *FLOWCEPTION_SETTINGS], q,
                              means=("mean_frames", "real_mean_frames", "length_tv", "token_accuracy",
                                     "copy_last_frame_token_accuracy")), [
                      ("extrapolation", "Extrapolation ×"), ("sampling_steps", "Steps per frame"),
                      ("insertion", "Insertion"), ("insertion_guidance", "w_s"), ("unmasking", "Unmasking"),
                      ("blockwise_stop", "Block-wise stop"), ("frame_time_power", "γ_f"), ("nfe", "Total NFE"),
                      ("mean_frames", "Frames"), ("real_mean_frames", "Real frames"), ("length_tv", "Length TV ↓"),
                      ("token_accuracy", "Token acc. ↑"), ("copy_last_frame_token_accuracy", "Copy-last acc."),
                      ("quality", qtitle), ("n", "N")]), ""]
    return "\n".join(parts)


#: The sweep's questions as figures: x column → (axis label, log scale, file name).
FIGURES = {
    "nfe": ("total NFE per video (log)", True, "quality_vs_nfe.png"),
    "stride": ("sampling stride s", False, "quality_vs_stride.png"),
    "guidance_scale": ("partial context guidance ω", False, "quality_vs_guidance.png"),
}


def plot_quality(df: pd.DataFrame, x: str, path: str | Path) -> Path | None:
    """Quality against ``x`` (a :data:`FIGURES` key), one line per sampler (mean over the other settings);
    ``None`` without finished runs or when ``x`` takes fewer than two values (nothing to compare)."""
    ok = df[df["status"] == "FINISHED"] if not df.empty else df
    if ok.empty or ok[x].nunique(dropna=True) < (1 if x == "nfe" else 2):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, log_x, _ = FIGURES[x]
    q, qtitle = _quality(ok)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for sampler, g in ok.groupby("sampler"):
        g = g.groupby(x, as_index=False)[q].mean().sort_values(x)
        ax.plot(g[x], g[q], marker="o", label=str(sampler))
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel(qtitle)
    ax.set_title(f"quality against {label.split(' (')[0]}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_quality_vs_nfe(df: pd.DataFrame, path: str | Path) -> Path | None:
    """Quality against total NFE, one series per sampler; ``None`` without runs (see :func:`plot_quality`)."""
    return plot_quality(df, "nfe", path)


def main(cfg: DictConfig) -> dict[str, Any]:
    """Render the report; returns ``{"markdown": path, "plot": path|None, "num_runs": int}``."""
    from experiments import tracking

    uri = tracking.resolve_tracking_uri(cfg.get("mlflow", {}).get("tracking_uri"))
    parent = cfg.get("parent_run_id")
    df = load_runs(uri, parent_run_id=parent, experiment=cfg.get("experiment"))
    out = Path(str(cfg.get("out_dir") or "outputs/report"))
    out.mkdir(parents=True, exist_ok=True)
    md = out / "report.md"
    md.write_text(render_markdown(df))
    plots = {x: plot_quality(df, x, out / name) for x, (_, _, name) in FIGURES.items()}
    if parent:
        client = tracking.get_client(uri)
        tracking.log_artifact(client, parent, md, artifact_path="report")
        for plot in plots.values():
            if plot is not None:
                tracking.log_artifact(client, parent, plot, artifact_path="report")
    log.info("report of %d runs: %s", len(df), md)
    plot = plots["nfe"]
    return {"markdown": str(md), "plot": str(plot) if plot else None, "num_runs": int(len(df)),
            "figures": {x: str(p) for x, p in plots.items() if p is not None}}


if __name__ == "__main__":  # pragma: no cover - CLI
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from experiments.cli import run

    res = run(main, "report")
    print(Path(res["markdown"]).read_text())
