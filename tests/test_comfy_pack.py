"""The pack inside real ComfyUI: loader, registration, schemas, and every shipped workflow."""

from __future__ import annotations

import json

import pytest

import comfy_harness as ch

EXPECTED_NODES = {
    "OutpaintPad",
    "AttentionBalanceNoiseOptimize",
    "FrequencyNoiseRefine",
    "NMGInvert",
    "NMGGuidance",
    "NMGEdit",
    "ZoomInterpolate",
    "ZoomOutpaintKeyframes",
    "SeamlessComposite",
    "FreeSizeOutpaint",
    "RePaintSampler",
    "DDNMSampler",
    "DiffPIRSampler",
    "PiGDMSampler",
    "MCGSampler",
}


def _our_nodes(comfy_env):
    nodes = comfy_env.init()["nodes"]
    return {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items()
            if getattr(v, "RELATIVE_PYTHON_MODULE", "").endswith(ch.PACK_NAME)
            or v.__module__.split(".")[0].endswith(ch.PACK_NAME)}


def test_pack_loads_through_comfyui_loader(comfy_env):
    lines = "\n".join(comfy_env.load_log()).splitlines()
    ours = [line for line in lines if line.rstrip().endswith(f"custom_nodes/{ch.PACK_NAME}")]
    assert ours, "the pack is missing from ComfyUI's 'Import times for custom nodes' table"
    assert not [line for line in ours if "IMPORT FAILED" in line], ours
    assert not [line for line in lines if "comfy_entrypoint" in line and "Error" in line], lines
    nodes = comfy_env.init()["nodes"]
    missing = EXPECTED_NODES - set(nodes.NODE_CLASS_MAPPINGS)
    assert not missing, f"node ids not registered: {missing}"
    # Registered by our extension, not by some other module with the same id.
    for node_id in EXPECTED_NODES:
        assert "alignnoise" in nodes.NODE_CLASS_MAPPINGS[node_id].__module__ or \
            ch.PACK_NAME in nodes.NODE_CLASS_MAPPINGS[node_id].__module__


@pytest.mark.parametrize("node_id", sorted(EXPECTED_NODES))
def test_schema_is_complete(comfy_env, node_id):
    cls = comfy_env.node_class(node_id)
    schema = cls.GET_SCHEMA()  # validates ids, types
    assert schema.node_id == node_id
    assert schema.display_name and schema.display_name != node_id or " " in (schema.display_name or "")
    assert schema.description and "\n" not in schema.description.strip()
    assert schema.category.startswith("alignnoise")
    for inp in schema.inputs:
        assert getattr(inp, "tooltip", None), f"{node_id}.{inp.id} has no tooltip"
    info = comfy_env.node_info(node_id)  # what /object_info serves
    assert info["name"] == node_id
    assert (ch.PACK_DIR / "web" / "docs" / f"{node_id}.md").is_file(), f"no help page for {node_id}"


def test_research_nodes_are_experimental(comfy_env):
    for node_id in ("AttentionBalanceNoiseOptimize", "FrequencyNoiseRefine", "NMGInvert", "NMGGuidance", "NMGEdit",
                    "RePaintSampler", "DDNMSampler", "DiffPIRSampler", "PiGDMSampler", "MCGSampler",
                    "FreeSizeOutpaint"):
        assert comfy_env.node_class(node_id).GET_SCHEMA().is_experimental, node_id


def test_web_directory_is_registered(comfy_env):
    import nodes

    dirs = {str(v) for v in nodes.EXTENSION_WEB_DIRS.values()}
    assert any(d.endswith("web") and ch.PACK_NAME in d or d == str(ch.PACK_DIR / "web") for d in dirs), dirs


WORKFLOWS = ch.example_workflows()


def test_there_are_example_workflows():
    assert WORKFLOWS, "example_workflows/ is empty"
    for wf in WORKFLOWS:
        assert wf.with_suffix(".jpg").is_file(), f"{wf.name} has no same-name .jpg thumbnail"
        data = json.loads(wf.read_text())
        assert "nodes" in data and "links" in data, f"{wf.name} is not a UI-format workflow"
        assert any(n["type"] in ("Note", "MarkdownNote") for n in data["nodes"]), f"{wf.name} has no Note"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_example_workflow_runs_as_shipped(comfy_env, workflow):
    prompt = comfy_env.ui_to_api(json.loads(workflow.read_text()))
    comfy_env.prepare_workflow_assets(prompt)
    result = comfy_env.run_prompt(prompt)
    saved = [o for o in result.ui.values() if "images" in o or "animated" in o or "video" in o]
    assert saved, f"{workflow.name} produced no saved/previewed output: {result.ui}"


def test_help_pages_state_the_schema_defaults(comfy_env):
    """Where a help page quotes a default ("(paper 0.55)", "(default 8)"), it is the widget's default:
    both come from alignnoise_core.options, so they cannot drift apart."""
    import re

    checked = 0
    for node_id in sorted(EXPECTED_NODES):
        defaults = {inp.id: getattr(inp, "default", None) for inp in comfy_env.node_class(node_id).GET_SCHEMA().inputs}
        page = (ch.PACK_DIR / "web" / "docs" / f"{node_id}.md").read_text()
        for name, text in re.findall(r"^\| `(\w+)`[^|]*\| (.*)\|$", page, re.M):
            quoted = re.search(r"\((?:paper|default) (-?[0-9.]+)\)", text)
            if quoted and isinstance(defaults.get(name), (int, float)) and not isinstance(defaults[name], bool):
                assert float(quoted.group(1)) == pytest.approx(float(defaults[name])), (node_id, name, text)
                checked += 1
    assert checked >= 8
