from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci_command = next(line for line in (ROOT / ".ci/run").read_text().splitlines() if line.endswith("pytest -q tests"))
    readme = (ROOT / "README.md").read_text()
    assert ci_command in readme
    assert readme.index(ci_command) < readme.index("##")  # one of the two commands at the top


def test_readme_main_command_is_the_offline_default_task():
    head = (ROOT / "README.md").read_text().split("##")[0]
    assert "python -m harness run task=digits method=l1 prune.flops_reduction=0.5" in head


def test_every_numeric_range_is_documented():
    from harness.config import RANGES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for key, (kind, interval, *_) in RANGES.items():
        assert f"| `{key}` | {'integer' if kind == 'int' else 'number'} in {interval}" in readme, key
