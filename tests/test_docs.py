from pathlib import Path

import pytest

pytestmark = pytest.mark.quick  # the inner loop: pytest -m quick

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci_command = next(line for line in (ROOT / ".ci/run").read_text().splitlines() if line.endswith("-q tests"))
    readme = (ROOT / "README.md").read_text()
    assert ci_command in readme
    assert readme.index(ci_command) < readme.index("##")  # one of the two commands at the top


def test_readme_main_command_is_the_offline_default_task():
    head = (ROOT / "README.md").read_text().split("##")[0]
    assert "python -m harness run task=digits method=l1 prune.flops_reduction=0.5" in head


def test_every_numeric_range_is_documented():
    from harness.config import RANGES

    readme = (ROOT / "docs" / "configuration.md").read_text()  # the harness's own keys; plug-ins': settings.md
    for key, (kind, interval, *_) in RANGES.items():
        assert f"| `{key}` | {'integer' if kind == 'int' else 'number'} in {interval}" in readme, key


def test_the_settings_reference_is_generated_from_the_declared_schemas():
    import runpy

    page = (ROOT / "docs" / "settings.md").read_text()
    render = runpy.run_path(str(ROOT / "scripts" / "settings_reference.py"))["render"]
    assert page == render(), "docs/settings.md is stale: run python scripts/settings_reference.py"
    from harness.config import RANGES, all_ranges

    for key, (kind, interval, *_) in all_ranges().items():
        if key.startswith(("method.", "regularizer.", "data.")) and key not in RANGES:  # a plug-in's own key
            assert f"| `{key}` |" in page and f"{'integer' if kind == 'int' else 'number'} in {interval}" in page, key


def test_the_docs_site_builds_strictly(tmp_path):
    import subprocess
    import sys

    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert (tmp_path / "site" / "settings" / "index.html").exists()


def test_the_readme_is_a_front_page_and_lists_every_module():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 260
    layout = readme.split("## Layout")[1]
    for folder in ("harness", "harness/core", "harness/latency"):
        for module in (ROOT / folder).glob("*.py"):
            if module.name not in ("__init__.py", "__main__.py"):
                assert module.name in layout, f"{folder}/{module.name} missing from the README's Layout"
