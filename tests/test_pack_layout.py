"""Host-free checks of the pack's packaging contract (run in CI without ComfyUI)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_init_uses_v3_entrypoint_only():
    tree = ast.parse((ROOT / "__init__.py").read_text())
    names = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for t in node.targets
             if isinstance(t, ast.Name)}
    assert "NODE_CLASS_MAPPINGS" not in names, "NODE_CLASS_MAPPINGS disables ComfyUI's V3 entry point"
    assert "WEB_DIRECTORY" in names
    funcs = {n.name for n in tree.body if isinstance(n, (ast.AsyncFunctionDef, ast.FunctionDef))}
    assert "comfy_entrypoint" in funcs


def test_core_imports_without_comfyui():
    """Every core module imports in a fresh interpreter without pulling in ComfyUI (a subprocess:
    the ComfyUI layer may already have imported comfy into this test process)."""
    modules = [p.stem for p in sorted((ROOT / "alignnoise_core").glob("*.py")) if p.stem != "__main__"]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module('alignnoise_core.' + m)\n"
        "bad = [m for m in sys.modules if m == 'comfy' or m.startswith('comfy.') or m == 'comfy_api']\n"
        "assert not bad, bad\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_only_one_core_module_imports_comfy():
    importers = []
    for path in (ROOT / "alignnoise_core").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if any(m == "comfy" or m.startswith("comfy.") or m.startswith("comfy_") for m in mods):
                importers.append(path.name)
                break
    assert importers in ([], ["comfy_bridge.py"]), importers


def test_no_print_in_package_code():
    for folder in ("alignnoise_core", "nodes"):
        for path in (ROOT / folder).glob("*.py"):
            tree = ast.parse(path.read_text())
            calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "print"]
            if path.name in ("cli.py", "__main__.py"):
                continue  # the command line writes to stdout on purpose
            assert not calls, f"print() in {path}: use logging"


def test_pyproject_registry_metadata():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = data["project"], data["tool"]["comfy"]
    assert "comfyui" not in project["name"].lower()
    assert project["requires-python"] == ">=3.10"
    assert set(project["optional-dependencies"]) >= {"test", "diffusers"}
    assert not any(d.split("=")[0].split(">")[0].strip() == "torch" for d in project["dependencies"]), \
        "torch comes with ComfyUI; never a runtime dependency"
    for key in ("PublisherId", "DisplayName", "Icon", "includes", "requires-comfyui"):
        assert key in comfy, key
    assert comfy["requires-comfyui"].startswith(">=0.")
    ignore = (ROOT / ".comfyignore").read_text().split()
    assert "tests/" in ignore and "bench/" in ignore


def test_every_node_file_lists_its_nodes():
    init = (ROOT / "nodes" / "__init__.py").read_text()
    for path in (ROOT / "nodes").glob("*.py"):
        if path.name == "__init__.py":
            continue
        assert f"{path.stem}.NODES" in init, f"nodes/{path.name} is not collected by nodes/__init__.py"
