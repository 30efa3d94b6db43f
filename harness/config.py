"""Compose the run configuration from the config groups and ``key=value`` overrides, then validate it.

Every user mistake becomes a ``ConfigError`` with one line that names the valid choices.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.core import settings as plugin_settings
from harness.core.errors import ConfigError
from harness.core.schedules import SCHEDULES
from harness.core.settings import check_range

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("task", "budget", "method", "regularizer", "tracking", "launcher")
PLAIN_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}"  # an experiment name: never a path
SECTIONS = (
    "task",
    "model",
    "data",
    "train",
    "finetune",
    "measure",
    "prune",
    "method",
    "regularizer",
    "tracking",
    "launcher",
)


def _registry(group: str):
    """The registry of a plug-in group (task, method, regularizer), its plug-ins discovered; None for others."""
    if group not in ("task", "method", "regularizer"):
        return None
    if group == "task":
        from tasks.base import TASKS as registry
    else:
        from methods.base import METHODS, REGULARIZERS

        registry = METHODS if group == "method" else REGULARIZERS
    registry.discover()
    return registry


def _plugins(group: str) -> dict[str, type]:
    """The plug-in classes that give ``group`` options of their own (task, method, regularizer): {name: class}."""
    registry = _registry(group)
    if registry is None:
        return {}
    return {n: c for n, c in registry.entries.items() if not getattr(c, "presets_only", False)}


def register_plugin_configs() -> None:
    """Each plug-in's settings with their defaults become its config node (``method=gbn``), and each task's
    declared config its ``task=<name>`` node (package _global_: model, data, train, finetune, measure), stored
    in Hydra's ConfigStore; a YAML file of the same name under conf/<group>/ takes precedence (method=anl
    switches a regulariser on), and presets there build on these nodes (``defaults: [gbn, _self_]``)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, cls in _plugins("task").items():
        if not (CONF_DIR / "task" / f"{name}.yaml").exists():
            store.store(group="task", name=name, node=cls.config(), package="_global_")
    for group in ("method", "regularizer"):
        for name, cls in _plugins(group).items():
            if not (CONF_DIR / group / f"{name}.yaml").exists():
                node = {"name": name, "description": cls.description} if group == "method" else {"name": name}
                store.store(group=group, name=name, node={**node, **plugin_settings.defaults(cls.settings)})


def group_options(group: str) -> list[str]:
    return sorted({p.stem for p in (CONF_DIR / group).glob("*.yaml")} | set(_plugins(group)))


def describe_group(group: str) -> dict[str, str]:
    """{option: one-line description}: a preset's from its config file, a plug-in's from its class."""
    out, plugins = {}, _plugins(group)
    for name in group_options(group):
        path = CONF_DIR / group / f"{name}.yaml"
        node = OmegaConf.load(path) if path.exists() else None
        if node is not None:  # a preset (a task's may name no description of its own)
            out[name] = str(node.get(group, node).get("description", ""))
        else:
            out[name] = plugins[name].description
        cls = plugins.get(str(node.get(group, node).get("impl", name))) if node is not None else plugins.get(name)
        if getattr(cls, "reconstruction", False):
            out[name] = f"[reconstruction] {out[name]}"
    return out


def plugin_class(cfg: DictConfig, group: str) -> type | None:
    """The class of the task, method or regulariser a composed config selects (None for regularizer=none)."""
    node = cfg.get(group)
    name = node.get("impl") or node.get("name") if node is not None else None
    registry = _registry(group)
    return registry.get(name) if group == "method" else registry.entries.get(name)


def all_ranges() -> dict[str, tuple]:
    """Every checked numeric key: the harness's own (RANGES) and every plug-in's declared settings (those of
    methods that only presets select included)."""
    out = dict(RANGES)
    for group in ("method", "regularizer"):
        for cls in _registry(group).entries.values():
            for s in plugin_settings.describe(cls.settings):
                if s.kind in ("int", "real"):
                    out[f"{group}.{s.name}"] = (s.kind, s.interval, s.nullable)
    for cls in _registry("task").entries.values():
        for s in plugin_settings.describe(cls.data_settings):
            if s.kind in ("int", "real"):
                out[f"data.{s.name}"] = (s.kind, s.interval, s.nullable)
    return out


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    overrides = _last_wins([_model_shorthand(o) for o in overrides])
    register_plugin_configs()
    _check_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        OmegaConf.resolve(cfg)  # a bad ${...} in an override fails here, as a config error, not later
    except (HydraException, OmegaConfBaseException, ValueError, TypeError) as e:  # Hydra raises all of these
        raise ConfigError(_explain(e, overrides)) from None
    validate(cfg)
    resolve_defaults(cfg)
    if cfg.get("tracking") is not None:
        from harness.tracking import take_credentials

        cfg.tracking.uri = take_credentials(cfg.tracking.uri)
    return cfg


def resolve_defaults(cfg: DictConfig) -> None:
    """Values that depend on other groups: ``data.val_fraction=null`` becomes 0.1 for a method that
    asks for validation data (``method.needs_validation``), 0 otherwise."""
    if cfg.data.get("val_fraction") is None:
        cfg.data.val_fraction = 0.1 if cfg.method.get("needs_validation") else 0.0


def parse_options(command: str, options: dict[str, str | None], overrides: list[str]) -> dict[str, str | None]:
    """The key=value options of ``bench``, ``export`` and ``compare`` (``run`` and ``sweep`` compose through
    Hydra): ``options`` are the keys with their defaults; a key given twice takes its last value, as in run;
    an unknown key is one line with the closest keys. Values stay text (paths with ~ or ?, comma lists)."""
    import difflib

    taken = ", ".join(f"{k}=" for k in options)
    out = dict(options)
    for item in _last_wins(list(overrides)):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"{command} takes key=value options ({taken}); got {item!r}")
        if key not in options:
            close = difflib.get_close_matches(key, list(options), n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise ConfigError(f"unknown {command} option {key!r}; {hint}{command} takes {taken}")
        out[key] = value
    return out


def number_option(command: str, opts: dict, key: str, low: float, high: float, kind: type = int):
    """``opts[key]`` (text, from ``parse_options``) as an int or float in [low, high]; ConfigError otherwise."""
    try:
        value = kind(opts[key])
    except (TypeError, ValueError):
        value = None
    if value is None or not low <= value <= high:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{command}: {key} must be {what} in [{low:g}, {high:g}], got {opts[key]!r}")
    return value


def _last_wins(overrides: list[str]) -> list[str]:
    """A key given twice takes its last value (base settings, then overrides), for groups too."""
    last = {item.partition("=")[0].lstrip("+~"): i for i, item in enumerate(overrides)}
    return [item for i, item in enumerate(overrides) if last[item.partition("=")[0].lstrip("+~")] == i]


def _model_shorthand(item: str) -> str:
    """``model=timm:resnet18`` means ``model.name=timm:resnet18`` (model is a section, not a group)."""
    key, eq, value = item.partition("=")
    return f"model.name={value}" if eq and key == "model" else item


def _check_overrides(overrides: list[str]) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or not key.lstrip("+~"):
            raise ConfigError(f"expected key=value, got {item!r} (e.g. task=digits method=l1 seed=0)")
        try:
            parser.parse_overrides([item])
        except HydraException as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"cannot parse {item!r} ({detail}); keys are dotted names (prune.flops_reduction), "
                "and a value with spaces, brackets or quotes must be quoted"
            ) from None
        key = key.lstrip("+~")
        if key in GROUPS:
            choices = group_options(key)
            for v in value.split(","):
                if v not in choices:
                    raise ConfigError(f"unknown {key} {v!r}; choose one of: {', '.join(choices)}")


def _explain(err: Exception, overrides: list[str]) -> str:
    msg = str(err).strip().splitlines()[0]
    if "not in struct" in str(err) or "Could not override" in str(err):
        key = msg.split("'")[1] if "'" in msg else msg
        return unknown_key_message(key, overrides)
    if "Could not append" in msg:
        return f"{msg} Drop the leading '+' to override it."
    return msg


def unknown_key_message(key: str, overrides: list[str]) -> str:
    """'unknown key 'prune.flops_reductoin'; did you mean 'prune.flops_reduction'? valid keys under ...':
    the closest valid keys (difflib), then the keys of the deepest section of ``key`` that exists."""
    import difflib

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    keep = [o for o in overrides if o.split("=")[0].lstrip("+~") in GROUPS]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = OmegaConf.to_container(hydra_compose(config_name="config", overrides=keep))
    leaves: list[str] = []

    def walk(node, prefix):
        for k, v in node.items():
            (walk(v, f"{prefix}{k}.") if isinstance(v, dict) and v else leaves.append(f"{prefix}{k}"))

    walk(cfg, "")
    close = difflib.get_close_matches(key, leaves, n=3, cutoff=0.75)
    if not close:  # a misspelt last part under the right section, or the right name under another section
        leaf = key.rpartition(".")[2]
        names = difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in leaves], n=3, cutoff=0.75)
        close = [k for k in leaves if k.rpartition(".")[2] in names][:3]
    parts, node, parent = key.split("."), cfg, ""
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            break
        node, parent = node[part], f"{parent}.{part}".lstrip(".")
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    where = f"valid keys under {parent!r}" if parent else "valid keys"
    return f"unknown key {key!r}; {hint}{where}: {', '.join(str(k) for k in node)}"


# Every numeric key of the harness's own sections and its accepted range, checked before anything runs
# (docs "Configuration"). A method's or regulariser's keys are declared by the plug-in (its ``settings``).
# (kind, interval, nullable): kind "int" or "real"; "[a, b]" closed, "(a" / "b)" open; "inf" unbounded.
_PHASE = {
    "epochs": ("int", "[1, 100000]"),
    "batch_size": ("int", "[1, 1048576]"),
    "lr": ("real", "(0, 100]"),
    "momentum": ("real", "[0, 1)"),
    "weight_decay": ("real", "[0, 1]"),
    "gamma": ("real", "(0, 1]"),
    "min_lr": ("real", "[0, 100]"),
    "warmup_epochs": ("real", "[0, 100000]"),
    "tail_epochs": ("int", "[0, 100000]"),
    "tail_lr": ("real", "(0, 100]", True),
}
RANGES: dict[str, tuple] = {
    "seed": ("int", "[0, 4294967295]"),
    "baseline_seed": ("int", "[0, 4294967295]", True),
    "threads": ("int", "[1, 4096]", True),
    "prune.flops_reduction": ("real", "[0, 1)"),
    "prune.min_channels_ratio": ("real", "[0, 1)"),
    "prune.round_to": ("int", "[1, 4096]", True),
    "prune.latency_reduction": ("real", "(0, 1)", True),
    "measure.target_batch": ("int", "[1, 1048576]"),
    **{f"train.{k}": v for k, v in _PHASE.items()},
    **{f"finetune.{k}": v for k, v in {**_PHASE, "epochs": ("int", "[0, 100000]")}.items()},
    "measure.eval_every": ("int", "[1, 100000]"),
    "measure.warmup": ("int", "[0, 100000]"),
    "measure.repeats": ("int", "[1, 100000]"),
    "measure.max_seconds": ("real", "[0, 100000]"),
    "measure.interval": ("real", "(0, 1]"),
    "data.val_fraction": ("real", "[0, 1)", True),
    "data.val_seed": ("int", "[0, 4294967295]"),
    "model.kwargs.width": ("int", "[1, 4096]"),
    "model.kwargs.depth": ("int", "[18, 152]"),
    "launcher.timeout_min": ("int", "[1, 10000000]"),
    "launcher.max_parallel": ("int", "[1, 4096]", True),
    "launcher.threads_per_job": ("int", "[1, 4096]", True),
    "launcher.time_min": ("int", "[1, 10000000]"),
    "launcher.signal_delay_s": ("int", "[0, 100000]"),
    "launcher.gpus_per_node": ("int", "[0, 1024]"),
    "launcher.cpus_per_task": ("int", "[1, 4096]"),
    "launcher.nodes": ("int", "[1, 100000]"),
    "launcher.tasks_per_node": ("int", "[1, 1024]"),
    "launcher.mem_gb": ("real", "(0, 1000000]"),
    "launcher.array_parallelism": ("int", "[1, 1000000]"),
}


# Keys that take one of a few words.
CHOICES: dict[str, tuple[str, ...]] = {
    "prune.target": ("macs", "latency"),
    "prune.normalize": ("none", "macs", "memory", "latency"),
    "prune.allocation": ("global", "knapsack"),
}


def validate(cfg: DictConfig) -> None:
    """Range checks that Hydra's typing cannot express. Runs before any data is touched."""
    _check_sections_and_ranges(cfg)
    _check_recipes(cfg)
    _check_measure_and_device(cfg)
    _check_plugins(cfg)
    _check_choices(cfg)


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _check_sections_and_ranges(cfg: DictConfig) -> None:
    for section in SECTIONS:  # ``train=0`` would replace a whole section by a value
        _need(
            section not in cfg or isinstance(cfg[section], DictConfig),
            f"{section} is a section of settings, not a value: set its keys instead ({section}.<key>=<value>)",
        )
    for key, spec in RANGES.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and leaf in node:
            check_range(key, node[leaf], *spec)
            if spec[0] == "int" and isinstance(node[leaf], float):  # seed=0.0 is seed 0, an int everywhere after
                node[leaf] = int(node[leaf])


def _check_recipes(cfg: DictConfig) -> None:
    for phase in ("train", "finetune"):
        _need(
            cfg[phase].schedule in SCHEDULES,
            f"{phase}.schedule must be one of {', '.join(SCHEDULES)}, got {cfg[phase].schedule!r}",
        )
        _need(
            cfg[phase].warmup_epochs <= cfg[phase].epochs,
            f"{phase}.warmup_epochs must be at most {phase}.epochs ({cfg[phase].epochs}), got {cfg[phase].warmup_epochs}",
        )
        _need(
            not cfg[phase].tail_epochs or cfg[phase].tail_lr is not None,
            f"{phase}.tail_lr must be set (e.g. 0.001) when {phase}.tail_epochs > 0",
        )


def _check_measure_and_device(cfg: DictConfig) -> None:
    _need(
        str(cfg.device) in ("auto", "cpu", "cuda")
        or (str(cfg.device).startswith("cuda:") and str(cfg.device)[5:].isdigit()),
        f"device must be auto, cpu or cuda[:N], got {cfg.device!r}",
    )
    for flag in ("pause_others", "steady_allocator"):
        _need(
            isinstance(cfg.measure.get(flag, True), bool),
            f"measure.{flag} must be true or false, got {cfg.measure.get(flag)!r}",
        )
    sizes = cfg.measure.batch_sizes
    _need(
        isinstance(sizes, ListConfig)
        and len(sizes) >= 1
        and all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 1048576 for b in sizes),
        f"measure.batch_sizes must be a non-empty list of integers in [1, 1048576], e.g. [1,64]; got {sizes!r}",
    )
    _need(
        re.fullmatch(PLAIN_NAME, str(cfg.tracking.experiment)) is not None,
        f"tracking.experiment must be a plain name (letters, digits, _ . -; 1-100 characters), "
        f"got {cfg.tracking.experiment!r}",
    )


def _check_plugins(cfg: DictConfig) -> None:
    """The method's, the regulariser's and the task's declared settings (method.*, regularizer.*, data.*)."""
    for group in ("method", "regularizer"):
        cls = plugin_class(cfg, group)
        if cls is not None:
            plugin_settings.check(group, cls.settings, cfg[group])
    task = plugin_class(cfg, "task")
    if task is not None:
        plugin_settings.check("data", task.data_settings, cfg.data)


def _check_choices(cfg: DictConfig) -> None:
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        _need(value is None or value in choices, f"{key} must be one of {', '.join(choices)}, got {value!r}")
    _need(
        cfg.prune.get("normalize") != "latency" or cfg.prune.get("target") == "latency",
        "prune.normalize=latency divides by the latency table's per-layer times, which a latency target builds: "
        "add prune.target=latency prune.latency_reduction=<cut>, or use prune.normalize=macs",
    )
    _need(
        cfg.prune.get("target") != "latency" or cfg.prune.get("latency_reduction") is not None,
        "prune.target=latency needs prune.latency_reduction (e.g. 0.4: cut the measured latency by 40%)",
    )
    lists = [cfg[phase].get("milestones") or [] for phase in ("train", "finetune")]
    milestones = [m for ms in lists if isinstance(ms, (list, ListConfig)) for m in ms]
    _need(
        all(isinstance(ms, (list, ListConfig)) for ms in lists)
        and all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in milestones),
        "train.milestones and finetune.milestones must be lists of epochs (integers >= 0), e.g. [80,120]",
    )
