"""scheduler_core never imports the UI: not textual, not carnation_tui. Checked twice, because each check alone
misses something: the source walk sees imports on paths a test run never takes, the run-time check sees imports
hidden in dependencies or done through importlib."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "scheduler_core"
FORBIDDEN = ("textual", "carnation_tui")


def _forbidden(module: str | None) -> bool:
    return module is not None and module.split(".")[0] in FORBIDDEN


def core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_the_core_is_where_this_test_looks() -> None:
    names = {path.name for path in core_files()}
    assert {"console.py", "engine.py", "events.py"} <= names


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(CORE)))
def test_no_ui_import_in_source(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _forbidden(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _forbidden(node.module):
            found.append(node.module)
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
              and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant) and _forbidden(str(node.args[0].value))):
            found.append(str(node.args[0].value))
    assert not found, f"{path.relative_to(CORE.parent)} imports {found}"


def test_the_source_check_catches_an_offender() -> None:
    """The walk above must be able to fail."""
    offenders = ["import textual", "from textual.app import App", "import carnation_tui.app as a",
                 "import importlib\nimportlib.import_module('textual.widgets')"]
    for source in offenders:
        tree = ast.parse(source)
        hits = [n for n in ast.walk(tree) if (isinstance(n, ast.Import) and any(_forbidden(a.name) for a in n.names))
                or (isinstance(n, ast.ImportFrom) and _forbidden(n.module))
                or (isinstance(n, ast.Call) and n.args and isinstance(n.args[0], ast.Constant)
                    and _forbidden(str(n.args[0].value)))]
        assert hits, source


RUNTIME_CHECK = """
import importlib, json, pkgutil, sys
import scheduler_core
failed = {}
for info in pkgutil.walk_packages(scheduler_core.__path__, "scheduler_core."):
    if ".migrations" in info.name or info.name.endswith(".__main__"):  # alembic's scripts; `python -m` runs
        continue
    try:
        importlib.import_module(info.name)
    except ImportError as exc:  # an optional extra (the HTTP API) not installed: not our concern here
        failed[info.name] = str(exc)
print(json.dumps({"loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "carnation_tui")),
                  "modules": sorted(m for m in sys.modules if m.startswith("scheduler_core")),
                  "failed": failed}))
"""


def test_no_ui_module_loaded_at_run_time() -> None:
    result = subprocess.run([sys.executable, "-c", RUNTIME_CHECK], capture_output=True, text=True, timeout=120,
                            cwd=CORE.parent)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], f"importing scheduler_core loaded {report['loaded']}"
    # Every module was really imported (a walk that found nothing would pass vacuously).
    expected = {f"scheduler_core.{p.relative_to(CORE).with_suffix('').as_posix().replace('/', '.')}"
                for p in core_files() if "migrations" not in p.parts and p.name not in ("__init__.py", "__main__.py")}
    missing = expected - set(report["modules"]) - set(report["failed"])
    assert not missing, f"not imported: {sorted(missing)}"


def test_the_run_time_check_catches_an_offender() -> None:
    result = subprocess.run([sys.executable, "-c", "import textual.app\n" + RUNTIME_CHECK], capture_output=True,
                            text=True, timeout=120, cwd=CORE.parent)
    assert "textual.app" in json.loads(result.stdout.strip().splitlines()[-1])["loaded"]
