"""``python -m harness compare``: MLflow runs -> one table per task, and plots.

Rows are (method, FLOPs target, setup). Runs are pooled over seeds only when they share a setup: the
baseline recipe (model, data options, train.*, regulariser), the fine-tuning budget (finetune.*), the
method's own settings and the per-layer minimum. Failed or unfinished runs are listed apart and never
averaged in. Published numbers come from ``harness/conf/paper_targets.yaml``.
"""

from __future__ import annotations

import hashlib

import pandas as pd
from omegaconf import OmegaConf

from harness.config import CONF_DIR

_NOT_SETUP = ("params.data.root", "params.data.download", "params.data.num_workers", "params.data.check_integrity")
_SETUP_PREFIXES = (
    "params.model.",
    "params.data.",
    "params.train.",
    "params.finetune.",
    "params.method.",
    "params.regularizer.",
    "params.prune.min_channels_ratio",
    "params.prune.round_to",
    "params.task.",
)


def load_runs(tracking_uri: str, experiment: str, superseded: bool = False) -> pd.DataFrame:
    """Every run of ``experiment`` in the store at ``tracking_uri`` (harness.tracking's reading side); runs
    marked superseded only with ``superseded``."""
    from harness.tracking import open_store

    return open_store(tracking_uri).runs(experiment, superseded=superseded)


def setup_columns(runs: pd.DataFrame) -> list[str]:
    return sorted(
        c
        for c in runs.columns
        if c.startswith(_SETUP_PREFIXES)
        and c not in _NOT_SETUP
        and c not in ("params.method.description", "params.task.description")
    )


def add_setup_ids(runs: pd.DataFrame) -> pd.DataFrame:
    cols = setup_columns(runs)
    runs = runs.copy()
    # A key absent from older runs (NaN) reads as its default, null, so adding a config key splits nothing.
    values = runs[cols].astype(object).where(runs[cols].notna(), "None").astype(str)
    runs["setup"] = values.agg("|".join, axis=1).map(lambda s: hashlib.sha1(s.encode()).hexdigest()[:6])
    return runs


def paper_targets() -> tuple[list[dict], float]:
    data = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "paper_targets.yaml"))
    return data["targets"], float(data["match_within"])


def _paper_row(method: str, task: str, reduction: float, model: str | None = None) -> dict | None:
    """The published row for (method, task, reduction); a row that names a ``model`` (VGG-16 on the
    CIFAR-10 task) matches only runs of that model."""
    targets, within = paper_targets()
    for t in targets:
        if (
            t["method"] == method
            and t["task"] == task
            and abs(t["flops_reduction"] - reduction) <= within
            and t.get("model") in (None, model)
        ):
            return t
    return None


def _paper_cells(paper: dict | None, row: dict) -> tuple[str, float]:
    """The published number and ours minus it. A row with only an accuracy drop (AIP's abstract) is
    compared on the drop from each side's own baseline."""
    if not paper:
        return "", float("nan")
    if paper.get("acc") is None:
        drop = float(paper["acc_drop"])
        return f"{paper['name']}: -{drop:.2f} vs base [{paper['mark']}]", row["Δ acc"] + drop
    return f"{paper['name']}: {paper['acc']:.2f} [{paper['mark']}]", row["final acc %"] - paper["acc"]


def aggregate(runs: pd.DataFrame, tolerance: float = 0.5) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, list[str]]:
    """({task: table}, failed runs, notes). Accuracies in the table are in %, reductions in %."""
    if runs.empty:
        return {}, pd.DataFrame(), []
    failed = runs[runs["status"] != "FINISHED"]
    done = add_setup_ids(runs[runs["status"] == "FINISHED"])
    notes = []
    tables = {}
    lat_cols = sorted(c for c in done.columns if c.startswith("metrics.latency/") and c.endswith("/speedup"))
    retimed_cols = sorted(c for c in done.columns if c.startswith("metrics.retime/") and c.endswith("/speedup"))
    done = _with_variant(_with_goal(with_study(done)))
    for study, t_runs in done.groupby("study"):
        task = t_runs["tags.task"].iloc[0]
        rows = []
        keys = ["variant", "goal", "goal_value", "setup"]
        n_setups = t_runs.groupby(keys[:3])["setup"].nunique()
        for (variant, goal, target, setup), g in t_runs.groupby(keys):
            method = g["tags.method"].iloc[0]
            rebuilt = "tags.reconstruction" in g and (g["tags.reconstruction"] == "true").any()
            row = {
                "method": f"{variant} (reconstruction)" if rebuilt else variant,
                "target": float(target),
                "target of": goal,
                "setup": setup,
                **_measures(g, goal, lat_cols, retimed_cols),
            }
            row["latency device"] = ", ".join(sorted(set(g.get("tags.latency_device", pd.Series(["?"])).dropna())))
            model = g["params.model.name"].iloc[0] if "params.model.name" in g else None
            plain = variant == method  # the paper's numbers are for the method as published
            paper = (
                _paper_row(method, task, g["metrics.flops_reduction"].mean(), model)
                if goal == "MACs" and plain
                else None
            )
            row["paper"], row["Δ paper"] = _paper_cells(paper, row)
            row["off paper"] = "⚠" if paper and abs(row["Δ paper"]) > tolerance else ""
            rows.append(row)
            if n_setups[(method, goal, target)] > 1:
                notes.append(
                    f"{study}/{method}@{target}: {n_setups[(method, goal, target)]} different setups "
                    "(baseline recipe, fine-tuning budget or method settings) are kept apart, not pooled"
                )
        table = pd.DataFrame(rows).sort_values(["target of", "target", "method", "setup"]).reset_index(drop=True)
        if table["setup"].nunique() == 1:
            table = table.drop(columns="setup")
        if (table["target of"] == "MACs").all():  # the usual table: every target is a MACs reduction
            table = table.drop(columns="target of")
        tables[study] = table
    return tables, failed, sorted(set(notes))


def _measures(g: pd.DataFrame, goal: str, lat_cols: list[str], retimed_cols: list[str]) -> dict:
    """One table row's numbers from the runs ``g`` of one setup: seeds, accuracy (%), reductions (%), the
    epochs trained after the baseline, and the speed-ups (measured in each run, and retimed together)."""
    acc = g["metrics.final_acc"] * 100
    row = {
        "n": len(g),
        "seeds": ",".join(sorted(g["tags.seed"].astype(str))),
        "base acc %": (g["metrics.base_acc"] * 100).mean(),
        # A spread over one seed is undefined: NaN, rendered as '–'.
        "final acc %": acc.mean(),
        "± std": acc.std(ddof=1) if len(g) > 1 else float("nan"),
        "Δ acc": ((g["metrics.final_acc"] - g["metrics.base_acc"]) * 100).mean(),
        "MACs ↓ %": g["metrics.flops_reduction"].mean() * 100,
        "params ↓ %": g["metrics.params_reduction"].mean() * 100,
    }
    if goal != "MACs":  # a latency target: what was measured at its batch size
        row["latency ↓ % measured"] = g["metrics.latency_reduction_measured"].mean() * 100
    if "metrics.epochs_after_baseline" in g:
        row["epochs after baseline"] = g["metrics.epochs_after_baseline"].mean()
    for col in lat_cols:
        batch = col.split("/")[1]
        row[f"speed-up {batch}"] = g[col].mean()
        row[f"speed-up {batch} 95%"] = _speedup_interval(g, batch)
    for col in retimed_cols:  # `harness retime`: timed together with other runs, comparable with them
        row[f"speed-up {col.split('/')[1]} retimed"] = g[col].mean()
    return row


def _with_variant(runs: pd.DataFrame) -> pd.DataFrame:
    """``variant``: the method, with the pruner's choices beside it when the run made them (``l1 [knapsack,
    ÷latency]``), so that runs with another allocation or normalisation are never pooled with the plain method."""
    runs = runs.copy()

    def name(row) -> str:
        extra = []
        if row.get("tags.allocation") == "knapsack":
            extra.append("knapsack")
        normalize = row.get("params.prune.normalize")  # null (the method's own) is the method as published
        if isinstance(normalize, str) and normalize not in ("None", "none", ""):
            extra.append(f"÷{normalize}")
        return f"{row['tags.method']} [{', '.join(extra)}]" if extra else str(row["tags.method"])

    runs["variant"] = [name(row) for _, row in runs.iterrows()] if len(runs) else pd.Series(dtype=str)
    return runs


def with_study(runs: pd.DataFrame) -> pd.DataFrame:
    """``study``: what a table is titled, the task, and the model beside it when the runs used another model
    than the task's default (``task=resnet56 model=resnet20`` is "resnet56 (model resnet20)")."""
    runs = runs.copy()
    if runs.empty:
        runs["study"] = pd.Series(dtype=str)
        return runs
    model = runs["params.model.name"] if "params.model.name" in runs else pd.Series(None, index=runs.index)

    def title(task, name) -> str:
        default = _default_model(str(task))
        return str(task) if pd.isna(name) or default is None or name == default else f"{task} (model {name})"

    runs["study"] = [title(t, m) for t, m in zip(runs["tags.task"], model)]
    return runs


def _default_model(task: str) -> str | None:
    """The model a task builds unless model= says otherwise (None for an unknown task)."""
    from tasks.base import TASKS

    TASKS.discover()
    cls = TASKS.entries.get(task)
    return cls.model_config["name"] if cls is not None else None


def _with_goal(runs: pd.DataFrame) -> pd.DataFrame:
    """What each run pruned to: ``goal`` 'MACs', or 'latency b<N>' for prune.target=latency (at batch N),
    and ``goal_value`` the requested reduction. Runs from before latency targets existed are MACs runs."""
    runs = runs.copy()
    kind = runs.get("params.prune.target", pd.Series("macs", index=runs.index)).fillna("macs")
    latency = kind == "latency"
    batch = runs.get("params.measure.target_batch", pd.Series("?", index=runs.index)).astype(str)
    runs["goal"] = ("latency b" + batch).where(latency, "MACs")
    lat_value = runs.get("params.prune.latency_reduction", pd.Series(float("nan"), index=runs.index))
    runs["goal_value"] = pd.to_numeric(lat_value, errors="coerce").where(
        latency, pd.to_numeric(runs["params.prune.flops_reduction"], errors="coerce")
    )
    return runs


def _speedup_interval(g: pd.DataFrame, batch: str) -> str:
    """The measured speed-up's 95% interval: ``[lo, hi]`` for one run; for several, the median over runs of
    each run's half-width, as ± % of its speed-up. '–' where runs recorded no interval."""
    lo, hi, mid = (g.get(f"metrics.latency/{batch}/{k}") for k in ("speedup_lo", "speedup_hi", "speedup"))
    if lo is None or hi is None or lo.isna().all():
        return "–"
    if len(g) == 1:
        return f"[{lo.iloc[0]:.2f}, {hi.iloc[0]:.2f}]"
    half = ((hi - lo) / 2 / mid * 100).dropna()
    return f"±{half.median():.1f}%"


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    shown = table.copy()
    for col in shown.columns:
        if shown[col].dtype.kind == "f":
            unit = "×" if col.startswith("speed-up") else ""
            missing = "–" if col == "± std" else ""
            shown[col] = shown[col].map(lambda v, u=unit, m=missing: m if pd.isna(v) else f"{v:.2f}{u}")
    if fmt == "latex":
        return shown.to_latex(index=False)
    return shown.to_markdown(index=False)


def failed_table(failed: pd.DataFrame) -> pd.DataFrame:
    cols = {
        "run_id": "run",
        "tags.task": "task",
        "tags.method": "method",
        "params.prune.flops_reduction": "target",
        "tags.seed": "seed",
        "status": "status",
        "tags.failure_reason": "reason",
    }
    present = {k: v for k, v in cols.items() if k in failed.columns}
    table = failed[list(present)].rename(columns=present)
    unexplained = {
        "RUNNING": "still running (or its process died without ending the run)",
        "SCHEDULED": "not started yet",
    }
    fallback = table["status"].map(lambda st: unexplained.get(st, f"{str(st).lower()}, no reason recorded"))
    table["reason"] = table["reason"].where(table["reason"].notna(), fallback) if "reason" in table else fallback
    return table
