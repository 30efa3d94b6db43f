"""``python -m harness <subcommand> [key=value ...]``.

argparse takes the subcommand (Hydra's own entry point cannot), then the Hydra compose API builds
the config from the groups in harness/conf plus the overrides, in struct mode.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from harness.core.errors import ConfigError, HarnessError, Terminated, raise_terminated

EPILOG = """examples:
  python -m harness run task=digits method=l1 prune.flops_reduction=0.5
  python -m harness run task=resnet56 method=l1 data.root=~/data seed=1 --json
  python -m harness sweep task=digits method=gbn,l1,random seed=0,1,2 launcher=slurm --wait
  python -m harness compare task=digits --out results/digits
  python -m harness retime <run id> <run id> ... batch=128   # several runs' models timed together
  python -m harness export results/runs/<...>/pruned_model.pt format=onnx
  python -m harness list
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (exit 2), like every other error here."""

    def error(self, message):
        print(f"error: {_printable(message)}; see python -m harness --help", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m harness",
        description="CNN filter-pruning harness",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    sub = p.add_subparsers(
        dest="command", metavar="{run,sweep,compare,bench,export,profile,retime,list}", parser_class=_Parser
    )
    sub.required = True
    _add_run_commands(sub)
    _add_model_commands(sub)
    _add_record_commands(sub)
    return p


def _add_run_commands(sub) -> None:
    """run, sweep and compare."""
    r = sub.add_parser("run", help="baseline -> prune -> fine-tune -> measure -> record, for one config")
    r.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. task=digits method=l1 prune.flops_reduction=0.5 seed=0",
    )
    r.add_argument("--json", action="store_true", help="print one final JSON line with the results on stdout")
    r.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    r.add_argument("--wait", action="store_true", help="with launcher=local|slurm: wait for the job and report it")
    w = sub.add_parser("sweep", help="expand comma lists (method=gbn,l1 seed=0,1,2) and launch the grid as a job array")
    w.add_argument("overrides", nargs="*", metavar="key=value", help="overrides; a,b,c lists span the grid")
    w.add_argument("--wait", action="store_true", help="wait for every job and print a table of results")
    c = sub.add_parser("compare", help="MLflow runs -> a table per task (mean ± std over seeds) and plots")
    c.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="filters and store: task=, method=, experiment=, tracking.uri=, results_dir=",
    )
    c.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    c.add_argument("--out", help="write the tables and PNG plots to this folder")
    c.add_argument(
        "--tolerance",
        type=float,
        default=0.5,
        help="flag rows further than this many accuracy points from the paper (default 0.5)",
    )
    c.add_argument("--no-log", action="store_true", help="do not log the report to MLflow as a run of its own")


def _add_record_commands(sub) -> None:
    """supersede and list: what marks the records and reads the registries."""
    sp = sub.add_parser(
        "supersede",
        help="mark finished runs found wrong (a defect fixed since): skip_finished runs their configs again, "
        'compare and the studies leave them out, the records stay: RUN_ID... reason="..." [tracking.uri=]',
    )
    sp.add_argument("items", nargs="+", metavar="RUN_ID|key=value", help="the run ids, then reason= (required)")
    sp.set_defaults(overrides=[])
    ls = sub.add_parser("list", help="the tasks, budgets and methods, one line each; --method NAME: its settings")
    ls.add_argument(
        "--method", metavar="NAME", help="a method's (or preset's) settings: default, accepted values, help"
    )
    ls.add_argument("--regularizer", metavar="NAME", help="a regulariser's settings")
    ls.add_argument(
        "--models", action="store_true", help="the registered model names (besides tv:<name> and timm:<name>)"
    )


def _add_model_commands(sub) -> None:
    """bench, export, profile and retime: what works on a saved pruned model."""
    b = sub.add_parser(
        "bench",
        help="latency of a saved pruned model: model=<pruned_model.pt> [batch=1,64] "
        "[backend=eager,compile,onnx] [threads=N] [device=cpu|cuda]",
    )
    b.add_argument("overrides", nargs="*", metavar="key=value")
    e = sub.add_parser(
        "export",
        help="a pruned model (file or MLflow run id) to format=onnx|torchscript|pt, "
        "BN folded, outputs checked [out=PATH] [tolerance=1e-3]",
    )
    e.add_argument("source", help="a pruned_model.pt saved by a run, or an MLflow run id")
    e.add_argument("overrides", nargs="*", metavar="key=value")
    pr = sub.add_parser(
        "profile",
        help="per-layer time of a pruned model (file or MLflow run id) and its dense original: "
        "[batch=64] [threads=1] [passes=20] [top=10] [out=DIR]",
    )
    pr.add_argument("source", help="a pruned_model.pt saved by a run, or an MLflow run id")
    pr.add_argument("overrides", nargs="*", metavar="key=value")
    rt = sub.add_parser(
        "retime",
        help="several pruned models of one architecture (files or MLflow run ids) and their dense original "
        "timed together in interleaved rounds, comparable with each other: [batch=128] [threads=1] "
        "[seconds=120] [log=true]",
    )
    rt.add_argument("items", nargs="+", metavar="RUN_ID|FILE|key=value", help="the models (one or more), then options")
    rt.set_defaults(overrides=[])


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may come after flags (run --json task=x seed=1): collect the stragglers.
    unknown_flags = [a for a in extra if a.startswith("-")]
    if unknown_flags or (extra and args.command == "list"):
        parser.error(f"unrecognized arguments: {' '.join(unknown_flags or extra)}")
    if extra:
        args.overrides += extra
    try:
        return _COMMANDS[args.command](args)
    except HarnessError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except Terminated:
        print("terminated (SIGTERM); the run's checkpoint is kept: run the same command to resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted; the run's checkpoint is kept: run the same command to resume", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permissions, a vanished folder: the run is already marked FAILED
        print(
            f"error: {type(e).__name__}: {e}; fix it (free disk space, permissions) and run the same command "
            "again: it resumes from its last checkpoint",
            file=sys.stderr,
        )
        return 6
    except Exception as e:  # a bug: one line here, the traceback in a file for the report
        return _internal_error(e)


def _lazy(module: str, name: str):
    """A command implemented in ``harness.<module>``, imported when it runs (``import harness`` stays light)."""

    def command(args) -> int:
        import importlib

        return getattr(importlib.import_module(f"harness.{module}"), name)(args)

    return command


_COMMANDS = {
    "list": lambda args: _list(args),
    "run": lambda args: _run(args),
    "sweep": lambda args: _sweep(args),
    "bench": _lazy("bench", "bench_command"),
    "export": _lazy("export", "export_command"),
    "profile": _lazy("profile", "profile_command"),
    "retime": _lazy("retime", "retime_command"),
    "supersede": lambda args: _supersede([*args.items, *args.overrides]),
    "compare": _lazy("report", "compare_command"),
}


def _internal_error(e: Exception) -> int:
    import tempfile
    import traceback

    with tempfile.NamedTemporaryFile("w", prefix="harness-error-", suffix=".txt", delete=False) as fh:
        traceback.print_exc(file=fh)
    print(
        f"error: internal error {type(e).__name__}: {_one_line(e)} (a bug; the traceback is in {fh.name}, "
        "please report it with the command)",
        file=sys.stderr,
    )
    return 1


def _one_line(e: Exception) -> str:
    """An error raised in a DataLoader worker comes back with the worker's traceback in its message;
    the line that matters is the last one."""
    text = str(e).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return _printable(text) if text else type(e).__name__


def _printable(text: str) -> str:
    """Control characters (a newline inside an echoed argument) escaped, so an error stays one line."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", lambda m: repr(m.group())[1:-1], text)


def _sweep(args) -> int:
    from harness import launch

    cfg, grid, jobs = launch.submit(args.overrides)
    if cfg.launcher.name == "inline":
        print(launch.results_table([{"status": "DONE", **s} for s in jobs], grid))
        return 0
    launch.print_submitted(cfg, jobs)
    if not args.wait:
        return 0
    rows = launch.wait(jobs)
    print(launch.results_table(rows, grid))
    if getattr(args, "json", False) and len(rows) == 1 and rows[0]["status"] == "DONE":
        print(json.dumps({k: v for k, v in rows[0].items() if k not in ("job", "status")}))
    return 0 if all(r["status"] == "DONE" for r in rows) else 1


def _supersede(items: list[str]) -> int:
    from harness.tracking import open_store, store_uri

    run_ids = [i for i in items if "=" not in i]
    opts = dict(i.split("=", 1) for i in items if "=" in i)
    unknown = sorted(set(opts) - {"reason", "tracking.uri", "results_dir"})
    if unknown:
        raise ConfigError(f"supersede takes reason=, tracking.uri= and results_dir=, not {unknown[0]}=")
    if not run_ids or not opts.get("reason", "").strip():
        raise ConfigError('supersede needs the run ids and why: supersede RUN_ID... reason="what was wrong"')
    store = open_store(store_uri(opts.get("tracking.uri"), opts.get("results_dir", "results")))
    store.supersede(run_ids, opts["reason"].strip())
    print(
        f"superseded {len(run_ids)} run(s): skip_finished=true runs their configs again; compare and the "
        "studies leave them out; the records stay in MLflow (tag harness.superseded)"
    )
    return 0


def _list(args) -> int:
    from harness.config import describe_group

    if args.method or args.regularizer:
        return _list_settings("method" if args.method else "regularizer", args.method or args.regularizer)
    if args.models:
        from tasks.models import list_models

        print("\n".join(list_models()))
        return 0
    for group in ("task", "budget", "method"):
        print(f"{group}s:")
        for name, desc in describe_group(group).items():
            print(f"  {name:<18} {desc}")
    return 0


def _list_settings(group: str, name: str) -> int:
    """``list --method gbn``: every setting of the method a name selects, with the preset's value."""
    from omegaconf import OmegaConf

    from harness.config import compose, plugin_class
    from harness.core.settings import describe

    cfg = compose([f"{group}={name}"])
    cls, node = plugin_class(cfg, group), cfg[group]
    print(f"{group} {name}: {node.get('description') or getattr(cls, 'description', '')}")
    settings = describe(cls.settings) if cls is not None else []
    if not settings:
        print("  (no settings of its own)")
    for s in settings:
        value = OmegaConf.to_container(node)[s.name]
        preset = "" if value == s.default else f" (default {s.default!r})"
        print(f"  {group}.{s.name} = {value!r}{preset}  [{s.accepted()}]\n      {s.help}")
    return 0


def _run(args) -> int:
    from omegaconf import OmegaConf

    from harness.config import compose

    cfg = compose(args.overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    if cfg.launcher.name != "inline":
        if any("," in o.partition("=")[2] and "[" not in o for o in args.overrides):
            from harness.core.errors import ConfigError

            raise ConfigError("run takes single values; use `python -m harness sweep` for comma lists")
        return _sweep(args)
    from harness.report import print_summary
    from harness.run import run

    summary = run(cfg)
    from harness.core import distributed

    if not distributed.is_main():  # a distributed run: rank 0 reports for all
        return 0
    if summary.get("skipped"):
        print(f"skipped: MLflow run {summary['mlflow_run_id']} already finished this config", file=sys.stderr)
    else:
        print_summary(summary, to_stderr=args.json)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
