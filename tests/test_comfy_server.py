"""The pack in a real ``main.py --cpu`` ComfyUI server: startup log, /object_info, a workflow over HTTP.

This is what a user gets: the server process imports the pack from a custom_nodes folder, the
frontend's node list comes from /object_info, and prompts run in the server's prompt worker.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import comfy_harness as ch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server():
    ch.require_comfyui()
    state = ch.init()
    work = state["work"]
    (work / "paths.yaml").write_text(
        f"alignnoise_test:\n  base_path: {work}\n  custom_nodes: custom_nodes\n  checkpoints: checkpoints\n")
    port = _free_port()
    log_path = work / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--disable-auto-launch", "--extra-model-paths-config", str(work / "paths.yaml"),
         "--output-directory", str(work / "server_out"), "--input-directory", str(work / "input"),
         "--database-url", "sqlite:///:memory:", "--disable-api-nodes"],
        cwd=state["root"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            _get(base + "/system_stats")
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"ComfyUI server did not start:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
    yield base, log_path
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_server_imports_pack_and_lists_nodes(server):
    from test_comfy_pack import EXPECTED_NODES

    base, log_path = server
    log = log_path.read_text()
    ours = [line for line in log.splitlines() if line.rstrip().endswith(f"custom_nodes/{ch.PACK_NAME}")]
    assert ours and not any("IMPORT FAILED" in line for line in ours), ours or log[-3000:]
    info = _get(base + "/object_info")
    assert EXPECTED_NODES <= set(info), EXPECTED_NODES - set(info)
    templates = _get(base + "/api/workflow_templates")
    shipped = {p.stem for p in ch.example_workflows()}
    assert set(templates.get(ch.PACK_NAME, [])) == shipped, templates


def test_basic_workflow_over_http(server):
    base, _ = server
    workflow = ch.PACK_DIR / "example_workflows" / "outpaint_basic.json"
    info = _get(base + "/object_info")
    prompt = ch.ui_to_api(json.loads(workflow.read_text()), object_info=info)
    ch.prepare_workflow_assets(prompt)
    req = urllib.request.Request(base + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        prompt_id = json.loads(r.read())["prompt_id"]
    deadline = time.time() + 600
    while time.time() < deadline:
        history = _get(f"{base}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            status = history[prompt_id]["status"]
            if status["status_str"] == "success":
                break
            pytest.fail(f"workflow failed in the server: {json.dumps(status['messages'])[-3000:]}")
        time.sleep(1)
    else:
        pytest.fail("workflow did not finish within 10 minutes")
    outputs = history[prompt_id]["outputs"]
    assert any("images" in o for o in outputs.values()), outputs
