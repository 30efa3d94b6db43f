"""Compose the run configuration from the config groups and ``key=value`` overrides, then validate it.

Every user mistake becomes a ``ConfigError`` with one line that names the valid choices.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("task", "budget", "method", "regularizer", "tracking", "launcher")
SCHEDULES = ("cosine", "step", "constant", "triangular", "onecycle")  # harness/train.py lr_factor


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def describe_group(group: str) -> dict[str, str]:
    """{option: one-line description} read from each option's config file."""
    out = {}
    for name in group_options(group):
        node = OmegaConf.load(CONF_DIR / group / f"{name}.yaml")
        out[name] = str(node.get(group, node).get("description", ""))
    return out


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    overrides = [_model_shorthand(o) for o in overrides]
    _check_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except HydraException as e:
        raise ConfigError(_explain(e, overrides)) from None
    validate(cfg)
    return cfg


def _model_shorthand(item: str) -> str:
    """``model=timm:resnet18`` means ``model.name=timm:resnet18`` (model is a section, not a group)."""
    key, eq, value = item.partition("=")
    return f"model.name={value}" if eq and key == "model" else item


def _check_overrides(overrides: list[str]) -> None:
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"expected key=value, got {item!r} (e.g. task=digits method=l1 seed=0)")
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
        parent, _, leaf = key.rpartition(".")
        hint = _valid_keys(parent, overrides)
        return f"unknown key {key!r}; valid keys{' under ' + repr(parent) if parent else ''}: {hint}"
    return msg


def _valid_keys(parent: str, overrides: list[str]) -> str:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    keep = [o for o in overrides if o.split("=")[0].lstrip("+~") in GROUPS]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=keep)
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return f"{parent!r} is a value, not a section"
    return ", ".join(str(k) for k in node.keys())


def validate(cfg: DictConfig) -> None:
    """Range checks that Hydra's typing cannot express. Runs before any data is touched."""
    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    def number(key: str) -> float:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return value

    r = number("prune.flops_reduction")
    need(0 <= r < 1, f"prune.flops_reduction must be in [0, 1), got {r} (0.5 removes half the MACs)")
    m = number("prune.min_channels_ratio")
    need(0 <= m < 1, f"prune.min_channels_ratio must be in [0, 1), got {m}")
    rt = cfg.prune.get("round_to")
    need(rt is None or (isinstance(rt, int) and rt >= 1), f"prune.round_to must be a positive integer or null, got {rt!r}")
    for phase, lowest in (("train", 1), ("finetune", 0)):
        epochs = number(f"{phase}.epochs")
        need(int(epochs) == epochs and epochs >= lowest,
             f"{phase}.epochs must be an integer >= {lowest}, got {epochs}")
        need(number(f"{phase}.batch_size") >= 1, f"{phase}.batch_size must be >= 1")
        need(number(f"{phase}.lr") > 0, f"{phase}.lr must be > 0, got {cfg[phase].lr}")
        need(cfg[phase].schedule in SCHEDULES,
             f"{phase}.schedule must be one of {', '.join(SCHEDULES)}, got {cfg[phase].schedule!r}")
        warm, tail = number(f"{phase}.warmup_epochs"), number(f"{phase}.tail_epochs")
        need(0 <= warm <= epochs, f"{phase}.warmup_epochs must be in [0, {phase}.epochs], got {warm}")
        need(int(tail) == tail and tail >= 0, f"{phase}.tail_epochs must be an integer >= 0, got {tail}")
        need(not tail or number(f"{phase}.tail_lr") > 0, f"{phase}.tail_lr must be > 0 with tail_epochs, "
             f"got {cfg[phase].tail_lr}")
    need(cfg.device in ("auto", "cpu", "cuda") or str(cfg.device).startswith("cuda:"),
         f"device must be auto, cpu or cuda[:N], got {cfg.device!r}")
    need(cfg.threads is None or number("threads") >= 1, f"threads must be >= 1 or null, got {cfg.threads}")
    need(len(cfg.measure.batch_sizes) >= 1 and all(int(b) >= 1 for b in cfg.measure.batch_sizes),
         "measure.batch_sizes must be a non-empty list of positive integers, e.g. [1,64]")
    need(number("measure.repeats") >= 1, "measure.repeats must be >= 1")
    need(int(number("measure.eval_every")) == cfg.measure.eval_every and cfg.measure.eval_every >= 1,
         f"measure.eval_every must be an integer >= 1, got {cfg.measure.eval_every}")
