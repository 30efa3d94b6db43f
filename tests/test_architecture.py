"""The shape of the code: arrows only downward (plug-ins stand on harness.core and harness.latency), MLflow
only behind the tracker, and a new method is one file that registers itself with its own settings."""

import ast
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.quick


def imports(path: Path) -> set[str]:
    """Every module a file imports, function-level imports included (absolute names)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def files(*folders: str) -> list[Path]:
    return [p for f in folders for p in (ROOT / f).rglob("*.py")]


def test_methods_and_tasks_import_only_the_core_and_latency_packages_of_harness():
    allowed = ("harness.core", "harness.latency")
    bad = {
        str(p.relative_to(ROOT)): sorted(
            m for m in imports(p) if m.split(".")[0] == "harness" and m != "harness" and not m.startswith(allowed)
        )
        for p in files("methods", "tasks")
    }
    assert not {k: v for k, v in bad.items() if v}


def test_the_core_and_latency_packages_import_neither_the_application_nor_a_plugin():
    allowed = ("harness.core", "harness.latency")
    bad = {
        str(p.relative_to(ROOT)): sorted(
            m
            for m in imports(p)
            if m.split(".")[0] in ("methods", "tasks") or (m.startswith("harness.") and not m.startswith(allowed))
        )
        for p in files("harness/core", "harness/latency")
    }
    assert not {k: v for k, v in bad.items() if v}
    used = {m for p in files("methods", "tasks") for m in imports(p)}
    assert any(m.startswith("harness.core") for m in used)  # the plug-ins do stand on it


def module_graph(folder: str) -> dict[str, set[str]]:
    """{module: the modules of ``folder``'s package it imports (function-level imports included)}."""
    names = {}
    for path in files(folder):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {m: {i for i in imports(p) if i in names and i != m} for m, p in names.items()}


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return circles


def test_no_import_circle_inside_harness():
    assert import_circles(module_graph("harness")) == []
    # the finder does find one (harness.core.surgery <-> allocation had one through a function-level import)
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_imports_nothing_from_the_latency_package():
    """harness.latency stands on harness.core, never the other way round (no circle between the packages)."""
    bad = {
        str(p.relative_to(ROOT)): sorted(m for m in imports(p) if m.startswith("harness.latency"))
        for p in files("harness/core")
    }
    assert not {k: v for k, v in bad.items() if v}


def test_no_module_but_the_tracker_imports_mlflow():
    offenders = [
        str(p.relative_to(ROOT))
        for p in files("harness", "methods", "tasks", "scripts", "benchmarks")
        # tracking.py is the client's seam; server_auth.py is the server's app (mlflow server --app-name)
        if p not in (ROOT / "harness" / "tracking.py", ROOT / "harness" / "server_auth.py")
        and any(m.split(".")[0] == "mlflow" for m in imports(p))
    ]
    assert offenders == []
    assert any(m.split(".")[0] == "mlflow" for m in imports(ROOT / "harness" / "tracking.py"))


def test_a_method_in_a_module_of_its_own_registers_lists_and_checks_its_settings(run_cli, tmp_path, monkeypatch):
    (tmp_path / "my_method.py").write_text(
        textwrap.dedent("""
        from dataclasses import dataclass

        from harness.core.settings import setting
        from methods.base import Method, register_method


        @dataclass
        class HalfSettings:
            alpha: float = setting(0.5, "real", "(0, 1]", help="how much of the criterion to keep")
            mode: str = setting("fast", choices=("fast", "exact"), help="how to rank")


        @register_method
        class Half(Method):
            name = "half_test"
            description = "a method defined outside methods/"
            settings = HalfSettings
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_method  # noqa: F401  (registers itself)

    from methods import METHODS

    try:
        code, out, err = run_cli("list")
        assert code == 0 and "half_test" in out and "a method defined outside methods/" in out
        code, out, err = run_cli("list", "--method", "half_test")
        assert code == 0 and "method.alpha = 0.5" in out and "number in (0, 1]" in out and "how to rank" in out
        code, out, err = run_cli("run", "method=half_test", "method.alpha=2", f"results_dir={tmp_path}")
        assert code == 2 and err.strip() == "error: method.alpha must be a number in (0, 1], got 2"
        code, out, err = run_cli("run", "method=half_test", "method.mode=slow", f"results_dir={tmp_path}")
        assert code == 2 and "method.mode must be one of fast, exact, got 'slow'" in err
        code, out, err = run_cli("run", "method=half_test", "method.alhpa=0.3", f"results_dir={tmp_path}")
        assert code == 2 and "did you mean 'method.alpha'" in err
    finally:
        METHODS.entries.pop("half_test", None)
        sys.modules.pop("my_method", None)


def test_every_public_function_of_the_core_and_latency_packages_has_type_hints():
    missing = []
    for path in files("harness/core", "harness/latency"):
        tree = ast.parse(path.read_text())
        scopes = [tree] + [n for n in tree.body if isinstance(n, ast.ClassDef)]  # module level and methods
        for scope in scopes:
            for fn in (n for n in scope.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
                if fn.name.startswith("_"):
                    continue
                args = [a for a in fn.args.args + fn.args.kwonlyargs if a.arg not in ("self", "cls")]
                if fn.returns is None or any(a.annotation is None for a in args):
                    missing.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}")
    assert missing == []


def test_a_package_of_ones_own_adds_a_method_through_the_entry_point_group(run_cli, tmp_path, monkeypatch):
    """What `pip install` of a package declaring [project.entry-points."harness.methods"] leaves on the path."""
    (tmp_path / "their_pruning.py").write_text(
        textwrap.dedent("""
        from methods.base import Method, register_method


        @register_method
        class Theirs(Method):
            name = "theirs_test"
            description = "a method from another package"
    """)
    )
    info = tmp_path / "their_pruning-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: their-pruning\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[harness.methods]\ntheirs = their_pruning\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from methods import METHODS

    monkeypatch.setattr(METHODS, "_discovered", False)
    try:
        code, out, err = run_cli("list")
        assert code == 0 and "theirs_test" in out and "a method from another package" in out
    finally:
        METHODS.entries.pop("theirs_test", None)
        sys.modules.pop("their_pruning", None)


def test_every_method_and_regulariser_gets_its_settings_as_a_typed_instance():
    """A plug-in reads ``self.settings.<name>``: an instance of its settings dataclass, plain Python values of
    the declared kinds, never the untyped config node."""
    import dataclasses

    from harness.config import compose
    from harness.core.settings import describe
    from methods import create_method, create_regularizer
    from tasks import create_task

    kinds = {"int": int, "real": (int, float), "bool": bool, "str": str, "list": list, "choice": str}
    built = [(m, type(m).settings, m.settings) for m in map(create_method, map(compose, _each("method")))]
    regularizer = create_regularizer(compose(["regularizer=anl"]))
    built.append((regularizer, type(regularizer).settings, regularizer.settings))
    built += [(t, type(t).data_settings, t.data) for t in map(create_task, map(compose, _each("task")))]
    for plugin, declared, instance in built:
        if declared is None:
            assert instance is None
            continue
        assert dataclasses.is_dataclass(instance) and isinstance(instance, declared)
        for s in describe(declared):
            value = getattr(instance, s.name)
            assert (value is None and s.nullable) or isinstance(value, kinds[s.kind]), (type(plugin), s.name, value)


def _each(group: str) -> list[list[str]]:
    from harness.config import group_options

    return [[f"{group}={name}"] for name in group_options(group)]


def test_a_task_is_one_file():
    """A task's whole config (description, model, data settings, recipes, batch sizes) is declared by its class,
    in the one module that defines it; harness/conf/task/ holds presets only (none need exist)."""
    from harness.config import CONF_DIR, compose, group_options
    from tasks.base import TASKS

    TASKS.discover()
    assert set(TASKS.entries) <= set(group_options("task"))
    for name, cls in TASKS.entries.items():
        assert not (CONF_DIR / "task" / f"{name}.yaml").exists()
        cfg = compose([f"task={name}"])
        assert cfg.task.description == cls.description and cfg.model.name == cls.model_config["name"]
        assert list(cfg.measure.batch_sizes) == list(cls.batch_sizes)
        # its data settings are declared in its own module or in a base class's (tasks.base: DataSettings)
        assert cls.data_settings.__module__ in {c.__module__ for c in cls.__mro__}


def test_no_library_function_is_longer_than_about_sixty_lines():
    """harness/, methods/ and tasks/: a function's body (its docstring left out) stays within 65 lines, so
    that it reads on one screen; ruff's C901 and PLR0913 (pyproject.toml) bound its branches and arguments."""
    long = []
    for path in files("harness", "methods", "tasks"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = fn.body[1:] if ast.get_docstring(fn) is not None else fn.body
                if body and fn.end_lineno - body[0].lineno + 1 > 65:
                    long.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}")
    assert long == []


def test_a_task_preset_is_a_yaml_file_that_builds_on_the_task(tmp_path, monkeypatch):
    """harness/conf/task/<preset>.yaml with ``defaults: [<task>, _self_]`` changes some of a task's values."""
    import shutil

    import harness.config
    from harness.config import CONF_DIR, compose, describe_group, group_options

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "task").mkdir(exist_ok=True)
    (conf / "task" / "digits_short.yaml").write_text(
        "# @package _global_\ndefaults:\n  - digits\n  - _self_\ntrain:\n  epochs: 3\n"
    )
    monkeypatch.setattr(harness.config, "CONF_DIR", conf)
    assert "digits_short" in group_options("task")
    assert "digits_short" in describe_group("task")  # listed (`harness list`) though it names no description
    cfg = compose(["task=digits_short"])
    assert (cfg.task.name, cfg.train.epochs, cfg.finetune.epochs, cfg.model.name) == ("digits", 3, 15, "digits_resnet")
