"""The short human summary printed at the end of a run."""

from __future__ import annotations

import re


def print_summary(s: dict, to_stderr: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=to_stderr)
    goal = (
        f"-{s['target_reduction']:.0%} latency at batch {s['latency_target_batch']}"
        if s.get("target") == "latency"
        else f"-{s['target_reduction']:.0%} MACs"
    )
    t = Table(title=f"{s['task']} / {s['method']} / seed {s['seed']}  (target: {goal})")
    t.add_column("")
    t.add_column("dense", justify="right")
    t.add_column("pruned", justify="right")
    t.add_row(
        f"{s['metric']} (test)",
        f"{s['base_acc']:.4f}",
        f"{s['final_acc']:.4f}  (before fine-tune {s['pruned_acc']:.4f})",
    )
    t.add_row(
        "MACs (batch 1)",
        f"{s['base_macs'] / 1e6:.3f} M",
        f"{s['final_macs'] / 1e6:.3f} M  (-{s['flops_reduction']:.1%})",
    )
    t.add_row(
        "params", f"{s['base_params'] / 1e6:.4f} M", f"{s['final_params'] / 1e6:.4f} M  (-{s['params_reduction']:.1%})"
    )
    for lat in s["latency"].values():
        t.add_row(
            f"latency{', ' + lat['scope'] if 'scope' in lat else ''}, batch {lat['batch_size']} "
            f"({lat['threads']} threads, {lat['device']})",
            f"{lat['dense_ms']:.3f} ms",
            f"{lat['pruned_ms']:.3f} ms  ({_speedup(lat)})",
        )
    if s.get("target") == "latency" and s.get("latency_reduction_measured") is not None:
        lo, hi = s.get("latency_reduction_measured_lo"), s.get("latency_reduction_measured_hi")
        interval = f" [{lo:.1%}, {hi:.1%}]" if lo is not None and hi is not None else ""
        t.add_row(
            f"latency cut, batch {s['latency_target_batch']}",
            f"requested {s['latency_reduction_requested']:.1%}",
            f"measured {s['latency_reduction_measured']:.1%}{interval}  (table predicted "
            f"{s['latency_reduction_predicted']:.1%})",
        )
    if s.get("latency_top_layers"):
        t.add_row(
            "most of the remaining latency",
            "",
            ", ".join(f"{h['layer']} {h['share']:.0%}" for h in s["latency_top_layers"]),
        )
    console.print(t)
    where = f"MLflow run {s['mlflow_run_id']}" if s.get("mlflow_run_id") else "tracking off"
    console.print(f"{where}; pruned model: {s['model_artifact']}; {s['wall_s']:.0f} s")


def safe_stem(name: str) -> str:
    """``name`` as a file name: letters, digits, _ . - only, never starting with a dot."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name)).lstrip(".") or "_"


_COMPARE_KEYS = ("task", "method", "experiment", "tracking.uri", "results_dir")


def compare_command(args) -> int:
    """The ``compare`` subcommand: prints the tables, writes them and the plots to ``--out``."""
    import time
    from pathlib import Path

    from harness import compare, plots
    from harness.config import PLAIN_NAME, parse_options
    from harness.core.errors import ConfigError
    from harness.tracking import MlflowTracker, store_uri

    opts = {
        k: v for k, v in parse_options("compare", dict.fromkeys(_COMPARE_KEYS), args.overrides).items() if v is not None
    }
    uri = store_uri(opts.get("tracking.uri"), opts.get("results_dir", "results"))
    experiment = opts.get("experiment", "harness")
    if not re.fullmatch(PLAIN_NAME, experiment):
        raise ConfigError(f"experiment must be a plain name (letters, digits, _ . -), got {experiment!r}")
    runs = compare.load_runs(uri, experiment)
    for key in ("task", "method"):
        if key in opts and not runs.empty:
            runs = runs[runs[f"tags.{key}"].isin(opts[key].split(","))]
    if runs.empty:
        raise ConfigError(
            f"no runs in experiment {experiment!r} at {uri} match {opts or 'anything'}; "
            "run some first (python -m harness run ...) or point tracking.uri= at the store"
        )
    runs = compare.with_study(runs)
    tables, failed, notes = compare.aggregate(runs, tolerance=args.tolerance)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    written = []
    ext = {"md": "md", "csv": "csv", "latex": "tex"}[args.format]
    for task, table in tables.items():
        text = compare.render(table, args.format)
        print(f"\n## {task}\n\n{text}")
        if out:
            stem = safe_stem(task)  # a task name comes from the store: it never picks a path outside --out
            (out / f"{stem}_table.{ext}").write_text(text + "\n")
            written.append(out / f"{stem}_table.{ext}")
            written.append(plots.accuracy_vs_flops(table, task, out / f"{stem}_acc_vs_macs.png"))
            written.append(plots.accuracy_vs_latency(table, task, out / f"{stem}_acc_vs_speedup.png"))
            written.append(plots.trajectories(_histories(uri, runs, task), task, out / f"{stem}_trajectories.png"))
    print(
        "\nAccuracy: final epoch, test split, mean ± sample std over n seeds. MACs at batch 1 (1 MAC = 2 FLOPs). "
        "Speed-up: dense ms / pruned ms per batch, median. Δ paper uses the paper's reported accuracy; "
        f"⚠ marks rows more than {args.tolerance} points off it."
    )
    for note in notes:
        print(f"note: {note}")
    if not failed.empty:
        print(f"\nFailed or unfinished runs ({len(failed)}), not averaged in:\n")
        print(compare.failed_table(failed).to_markdown(index=False))
    written = [w for w in written if w]
    if out and not args.no_log and written:
        tracker = MlflowTracker(uri, experiment, Path(opts.get("results_dir", "results")) / "mlruns")
        tracker.start(
            {"filters": str(opts)},
            {"harness.kind": "report", "mlflow.runName": f"compare-{time.strftime('%Y%m%d-%H%M%S')}"},
        )
        for path in written:
            tracker.log_artifact(path, "compare")
        tracker.end()
        print(f"\nwrote {len(written)} files to {out} and logged them to MLflow run {tracker.run_id}")
    return 0


def _histories(uri: str, runs, task: str) -> dict:
    """prune/macs and prune/acc per step, for the first seed of each (method, target) of a study (a task, and
    its model when not the task's default: compare.with_study)."""
    import pandas as pd

    from harness.tracking import open_store

    store = open_store(uri)
    done = runs[(runs["status"] == "FINISHED") & (runs["study"] == task)]
    out = {}
    for (method, target), g in done.groupby(["tags.method", "params.prune.flops_reduction"]):
        run_id = g.sort_values("tags.seed")["run_id"].iloc[0]
        macs, acc = store.metric_history(run_id, "prune/macs"), store.metric_history(run_id, "prune/acc")
        steps = sorted(set(macs) & set(acc))
        if steps:
            out[f"{method}@{float(target):.0%}"] = pd.DataFrame(
                {"step": steps, "macs": [macs[s] for s in steps], "acc": [acc[s] for s in steps]}
            )
    return out


def _speedup(lat: dict) -> str:
    """``1.36x [1.31, 1.40], 25 pairs``: the median speed-up, its 95% interval when there is one."""
    text = f"{lat['speedup']:.2f}x"
    if lat.get("speedup_lo") is not None:
        text += f" [{lat['speedup_lo']:.2f}, {lat['speedup_hi']:.2f}]"
    return text + (f", {lat['pairs']} pairs" if "pairs" in lat else "")
