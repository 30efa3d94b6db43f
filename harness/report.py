"""The short human summary printed at the end of a run."""
from __future__ import annotations


def print_summary(s: dict, to_stderr: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=to_stderr)
    t = Table(title=f"{s['task']} / {s['method']} / seed {s['seed']}  (target: -{s['target_reduction']:.0%} MACs)")
    t.add_column("")
    t.add_column("dense", justify="right")
    t.add_column("pruned", justify="right")
    t.add_row(f"{s['metric']} (test)", f"{s['base_acc']:.4f}", f"{s['final_acc']:.4f}  (before fine-tune {s['pruned_acc']:.4f})")
    t.add_row("MACs (batch 1)", f"{s['base_macs'] / 1e6:.3f} M", f"{s['final_macs'] / 1e6:.3f} M  (-{s['flops_reduction']:.1%})")
    t.add_row("params", f"{s['base_params'] / 1e6:.4f} M", f"{s['final_params'] / 1e6:.4f} M  (-{s['params_reduction']:.1%})")
    for lat in s["latency"].values():
        t.add_row(f"latency, batch {lat['batch_size']} ({lat['threads']} threads, {lat['device']})",
                  f"{lat['dense_ms']:.3f} ms", f"{lat['pruned_ms']:.3f} ms  ({lat['speedup']:.2f}x)")
    console.print(t)
    where = f"MLflow run {s['mlflow_run_id']}" if s.get("mlflow_run_id") else "tracking off"
    console.print(f"{where}; pruned model: {s['model_artifact']}; {s['wall_s']:.0f} s")
