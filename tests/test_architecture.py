"""The engine (gpttui/core) must not depend on the user interface: no Textual, directly or through
gpttui's UI package, so it can be used from scripts, tests and other front ends."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gpttui.core

CORE = Path(gpttui.core.__file__).resolve().parent
FORBIDDEN_ROOTS = {"textual", "textual_plotext", "plotext"}
FORBIDDEN_PACKAGES = ("gpttui.tui", "gpttui.app")


def _core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(path: Path) -> str:
    return _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    """Every module an import statement in ``path`` names (relative imports resolved against
    ``package``), with line numbers; string arguments of import_module/__import__ too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            found += [(node.lineno, f"{mod}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__"
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _forbidden(module: str) -> bool:
    return module.split(".")[0] in FORBIDDEN_ROOTS or any(
        module == p or module.startswith(p + ".") for p in FORBIDDEN_PACKAGES
    )


def test_the_checker_sees_what_it_must(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nimport textual.app\nfrom textual import on\nfrom ..tui import screens\n"
        "def f():\n    import textual_plotext\n    importlib.import_module('textual.widgets')\n",
        encoding="utf-8",
    )
    bad = [m for _, m in _imports(sample, "gpttui.core") if _forbidden(m)]
    assert "textual.app" in bad and "textual" in bad and "gpttui.tui" in bad
    assert "textual_plotext" in bad and "textual.widgets" in bad and "os" not in bad
    assert _package(CORE / "model.py") == "gpttui.core" == _package(CORE / "__init__.py")


def test_core_files_exist():
    names = {p.name for p in _core_files()}
    assert {"config.py", "model.py", "tokenizer.py", "data.py", "errors.py", "paths.py"} <= names


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: p.name)
def test_no_ui_imports_in_core(path):
    bad = [f"{path.name}:{line}: {mod}" for line, mod in _imports(path, _package(path)) if _forbidden(mod)]
    assert not bad, "gpttui.core must not import the UI:\n" + "\n".join(bad)


def test_importing_core_loads_no_textual():
    """The same, transitively: import every core module in a fresh interpreter."""
    modules = [_module_name(p) for p in _core_files()]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'textual', 'textual_plotext', 'plotext'}"
        " or m.startswith('gpttui.tui'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
