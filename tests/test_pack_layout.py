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


COMFY_MODULES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "node_helpers", "folder_paths",
                 "latent_preview", "execution", "server")


def _imports(tree):
    """(module name, node, is_top_level) for every absolute import in a module."""
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            yield name, node, id(node) in top


def _is_comfy(name: str) -> bool:
    return name.split(".")[0] in COMFY_MODULES


def test_comfy_code_only_in_its_sub_package():
    """ComfyUI-aware code lives in alignnoise_core/comfy_host/ (one module per feature, importing
    comfy at module top); every other core module is host-free; nothing but nodes/ imports comfy_host."""
    core = ROOT / "alignnoise_core"
    host_modules = sorted((core / "comfy_host").glob("*.py"))
    assert len(host_modules) >= 5, host_modules
    for path in sorted(core.rglob("*.py")):
        tree = ast.parse(path.read_text())
        rel = path.relative_to(ROOT)
        in_host = path.parent.name == "comfy_host"
        for name, node, top_level in _imports(tree):
            if _is_comfy(name):
                assert in_host, f"{rel} imports {name}: ComfyUI code belongs in alignnoise_core/comfy_host/"
                assert top_level, f"{rel}:{node.lineno} imports {name} inside a function: import comfy at module top"
        if not in_host:
            relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0
                        and "comfy_host" in (n.module or "")]
            assert not relative and not any("comfy_host" in n for n, _, _ in _imports(tree)), \
                f"{rel} imports comfy_host: only nodes/ may"


def test_nodes_import_the_core_by_its_plain_name():
    """One copy of the core per process (see __init__.py): nodes/ import ``alignnoise_core`` absolutely."""
    for path in (ROOT / "nodes").glob("*.py"):
        tree = ast.parse(path.read_text())
        bad = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0
               and (n.module or "").startswith("alignnoise_core")]
        assert not bad, f"nodes/{path.name} lines {bad}: use 'from alignnoise_core ...'"


def test_no_module_over_500_lines():
    for folder in ("alignnoise_core", "nodes"):
        for path in (ROOT / folder).rglob("*.py"):
            n = len(path.read_text().splitlines())
            assert n <= 500, f"{path.relative_to(ROOT)} has {n} lines; split it by topic"


def test_no_print_in_package_code():
    for folder in ("alignnoise_core", "nodes"):
        for path in (ROOT / folder).rglob("*.py"):
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
        if path.name.startswith("_"):
            continue  # __init__ and shared widget helpers
        assert f"{path.stem}.NODES" in init, f"nodes/{path.name} is not collected by nodes/__init__.py"
