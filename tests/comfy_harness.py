"""Run the pack inside a real ComfyUI checkout (``COMFYUI_PATH``) for the integration layer.

Nothing here mocks ComfyUI: the pack is loaded through ComfyUI's own custom-node loader, prompts run
through ``execution.PromptExecutor`` (the same object the server's prompt worker uses, so every node
executes under ``torch.inference_mode()``), and checkpoints are generated from ComfyUI's own model
classes so that ``CheckpointLoaderSimple`` detects them like real SD1.5/SD2 files.

Tests call :func:`require_comfyui` (or use the ``comfy_env`` fixture), which skips with a printed
reason when ``COMFYUI_PATH`` is unset. When it is set, failures to import ComfyUI are errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import torch

PACK_DIR = Path(__file__).resolve().parents[1]
PACK_NAME = "alignnoise"
SKIP_REASON = ("COMFYUI_PATH is not set: ComfyUI-layer test skipped. Point COMFYUI_PATH at a ComfyUI "
               "checkout (with its requirements installed) to run it.")

_state: dict = {}


def comfyui_path() -> Path | None:
    p = os.environ.get("COMFYUI_PATH")
    return Path(p).resolve() if p else None


def require_comfyui() -> None:
    """Skip the calling test unless ``COMFYUI_PATH`` points to a ComfyUI checkout; then init once."""
    path = comfyui_path()
    if path is None:
        pytest.skip(SKIP_REASON)
    if not (path / "main.py").is_file() or not (path / "comfy").is_dir():
        pytest.fail(f"COMFYUI_PATH={path} is set but is not a ComfyUI checkout (no main.py / comfy/).")
    init()


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(record.getMessage())


def init() -> dict:
    """Import ComfyUI on the CPU, load built-in nodes and this pack through ComfyUI's loader (once)."""
    if _state:
        return _state
    root = comfyui_path()
    sys.path.insert(0, str(root))
    from comfy.cli_args import args

    from comfy.cli_args import LatentPreviewMethod

    args.cpu = True  # must happen before comfy.model_management is imported
    args.preview_method = LatentPreviewMethod.NoPreviews

    import folder_paths
    import utils.extra_config  # noqa: F401  (as main.py: registers ComfyUI's `utils` package before
    #                            nodes.py puts comfy/ on sys.path, where comfy/utils.py would shadow it)

    work = Path(tempfile.mkdtemp(prefix="alignnoise_comfy_"))
    for sub in ("custom_nodes", "checkpoints", "input", "output", "temp"):
        (work / sub).mkdir()
    (work / "custom_nodes" / PACK_NAME).symlink_to(PACK_DIR, target_is_directory=True)
    folder_paths.set_output_directory(str(work / "output"))
    folder_paths.set_temp_directory(str(work / "temp"))
    folder_paths.set_input_directory(str(work / "input"))
    folder_paths.add_model_folder_path("checkpoints", str(work / "checkpoints"), is_default=True)
    # Only our temp custom_nodes dir: other packs in the checkout must not influence our tests.
    folder_paths.folder_names_and_paths["custom_nodes"] = ([str(work / "custom_nodes")], set())

    import nodes

    handler = _ListHandler()
    logging.getLogger().addHandler(handler)
    previous_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.INFO)
    try:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(previous_level)
    _state.update(root=root, work=work, load_log=handler.records, nodes=nodes)
    return _state


def load_log() -> list[str]:
    return _state["load_log"]


def node_class(node_id: str):
    return _state["nodes"].NODE_CLASS_MAPPINGS[node_id]


def node_info(node_id: str) -> dict:
    """What ``GET /object_info/<node_id>`` returns (same code path for V3 nodes)."""
    from comfy_api.internal import _ComfyNodeInternal

    cls = node_class(node_id)
    if issubclass(cls, _ComfyNodeInternal):
        return cls.GET_NODE_INFO_V1()
    types = cls.INPUT_TYPES()
    return {"input": types, "input_order": {k: list(v.keys()) for k, v in types.items()}}


class _StubServer:
    """The executor reports progress to a server object; nothing listens in tests."""

    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


class PromptResult:
    def __init__(self, executor, prompt):
        self.executor = executor
        self.prompt = prompt
        self.ui = executor.history_result.get("outputs", {})

    def outputs(self, node_id: str) -> list:
        """The Python values of a node's outputs (first item of each output slot)."""
        cache = self.executor.caches.outputs
        # Newer ComfyUI made the output cache's get() async; get_local() is its synchronous form.
        get = getattr(cache, "get_local", None) or cache.get
        entry = get(str(node_id))
        if asyncio.iscoroutine(entry):
            entry = asyncio.run(entry)
        assert entry is not None, f"node {node_id} has no cached outputs"
        return [slot[0] if isinstance(slot, list) and len(slot) == 1 else slot for slot in entry.outputs]


def run_prompt(prompt: dict) -> PromptResult:
    """Validate and execute an API-format prompt in-process, exactly as ComfyUI's prompt worker does."""
    import execution

    prompt_id = str(uuid.uuid4())
    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    ok, error, outputs, node_errors = valid[0], valid[1], valid[2], valid[3]
    if not ok:
        raise AssertionError(f"prompt failed validation: {error}\nnode errors: {json.dumps(node_errors, indent=1)}")
    # "ram_inactive" is read by newer ComfyUI executors; older ones ignore the extra key.
    e = execution.PromptExecutor(_StubServer(), cache_type=execution.CacheType.CLASSIC,
                                 cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    e.execute(prompt, prompt_id, extra_data={}, execute_outputs=outputs)
    if not e.success:
        errors = [m for m in e.status_messages if m[0] == "execution_error"]
        detail = errors[0][1] if errors else e.status_messages
        if isinstance(detail, dict):
            raise PromptError(detail.get("exception_message", ""), detail)
        raise PromptError(str(detail), {})
    return PromptResult(e, prompt)


class PromptError(AssertionError):
    def __init__(self, message: str, detail: dict):
        tb = "".join(detail.get("traceback", [])) if detail else ""
        super().__init__(f"{detail.get('node_type', '?')} failed: {message}\n{tb}")
        self.message = message
        self.detail = detail


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------

_UNET_BASE = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "out_channels": 4, "use_temporal_resblock": False, "use_temporal_attention": False,
}


def _init_params(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI's ops skip weight init (weights are torch.empty); fill them reproducibly: normalisation
    layers get unit scale and zero shift (found by module type: SD's ResBlock norms are named
    ``in_layers.0``/``out_layers.0``/``out.0``, and a zero scale there would make the UNet output
    identically 0), biases zero, other weights N(0, 1/fan_in)."""
    g = torch.Generator().manual_seed(seed)
    norm_scales = {id(m.weight) for m in module.modules()
                   if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and m.weight is not None}
    for name, p in module.named_parameters():
        if p.ndim == 0:
            continue  # scalars (TAESD's vae_scale/vae_shift) keep their constructor values
        if id(p) in norm_scales or ("norm" in name and name.endswith("weight") and p.ndim == 1):
            p.data.copy_(torch.ones_like(p))
        elif name.endswith("bias") or p.ndim == 1:
            p.data.copy_(torch.zeros_like(p))
        else:
            fan_in = p[0].numel()
            p.data.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)


def tiny_model(in_channels: int = 4, seed: int = 0, num_heads: int = 2, **unet_overrides):
    """A tiny SD1.5-type ModelPatcher built under inference_mode (weights are inference tensors, as
    when ``CheckpointLoaderSimple`` loads a model inside the executor). Latent 16x16 -> attention at
    16x16 (input 1), 8x8 (input 3), 4x4 (input 5), middle 2x2 and output 0..5.

    ``unet_overrides`` replace entries of the UNet config (e.g. ``model_channels``, ``channel_mult``
    for a benchmark-size model); ``num_heads`` is the SD15 attention head count."""
    import comfy.model_patcher
    import comfy.supported_models

    unet = dict(_UNET_BASE, in_channels=in_channels, model_channels=32, context_dim=768,
                channel_mult=[1, 1, 1], num_res_blocks=[1, 1, 1], transformer_depth=[1, 1, 1],
                transformer_depth_output=[1] * 6, transformer_depth_middle=1, use_linear_in_transformer=False)
    unet.update(unet_overrides)
    with torch.inference_mode():
        cfg = comfy.supported_models.SD15(unet)
        cfg.unet_config["num_heads"] = num_heads
        cfg.set_inference_dtype(torch.float32, None)
        model = cfg.get_model({})
        if in_channels > 4:
            model.set_inpaint()
        _init_params(model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


_CKPT_UNET = {
    "sd15": dict(context_dim=768, use_linear_in_transformer=False, num_heads=8, in_channels=4),
    "sd15_inpaint": dict(context_dim=768, use_linear_in_transformer=False, num_heads=8, in_channels=9),
    "sd20": dict(context_dim=1024, use_linear_in_transformer=True, num_heads=-1, num_head_channels=64, in_channels=4),
    "sd20_inpaint": dict(context_dim=1024, use_linear_in_transformer=True, num_heads=-1, num_head_channels=64,
                         in_channels=9),
}


def make_checkpoint(kind: str = "sd15", name: str | None = None, with_clip: bool | None = None) -> str:
    """Write a random-weight checkpoint that ComfyUI detects as ``kind`` and return its name.

    The UNet is the smallest that ComfyUI's detection still matches (model_channels 320, two levels,
    44M params); the VAE is TAESD. SD1 kinds include a random CLIP-L so ``CLIPTextEncode`` works
    (about 250 MB on disk, generated once per test session in a temp dir, never in the repo).
    """
    import safetensors.torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.taesd.taesd import TAESD

    name = name or f"random_{kind}.safetensors"
    ckpt_dir = _state["work"] / "checkpoints"
    path = ckpt_dir / name
    if path.exists():
        return name
    with_clip = kind.startswith("sd15") if with_clip is None else with_clip
    spec = dict(_CKPT_UNET[kind])
    unet_cfg = dict(_UNET_BASE, model_channels=320, num_res_blocks=[1, 1], channel_mult=[1, 1],
                    transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1,
                    **spec)
    import comfy.ops

    unet_cfg["operations"] = comfy.ops.disable_weight_init
    unet = UNetModel(**unet_cfg)
    _init_params(unet, seed=len(kind))
    sd = {f"model.diffusion_model.{k}": v.half() for k, v in unet.state_dict().items()}
    taesd = TAESD()
    _init_params(taesd, seed=1)
    sd.update({f"first_stage_model.{k}": v.half() for k, v in taesd.state_dict().items()})
    if with_clip:
        sd.update(_random_clip_l_state_dict())
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return name


def _random_clip_l_state_dict() -> dict:
    if "clip_sd" not in _state:
        import transformers

        cfg_path = _state["root"] / "comfy" / "sd1_clip_config.json"
        config = transformers.CLIPTextConfig(**json.loads(cfg_path.read_text()))
        torch.manual_seed(0)
        model = transformers.CLIPTextModel(config)
        _state["clip_sd"] = {f"cond_stage_model.transformer.{k}": v.half()
                             for k, v in model.state_dict().items() if "position_ids" not in k}
    return _state["clip_sd"]


def fake_conditioning(batch: int = 1, dim: int = 768, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, 77, dim, generator=g), {}]]


def put_input_image(image: torch.Tensor, name: str = "alignnoise_test.png") -> str:
    """Save an IMAGE tensor [H,W,3] or [1,H,W,3] (0..1) into ComfyUI's input dir for ``LoadImage``."""
    import numpy as np
    from PIL import Image

    if image.ndim == 4:
        image = image[0]
    arr = (image.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(_state["work"] / "input" / name)
    return name


# --------------------------------------------------------------------------------------------------
# UI-format workflows -> API prompts (what the frontend's graphToPrompt does)
# --------------------------------------------------------------------------------------------------

_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
_FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}


def _is_widget(spec) -> bool:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in _WIDGET_TYPES


def _extra_widget_values(spec) -> int:
    """Widgets the frontend adds after an input: the seed control, the image upload button."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return int(bool(opts.get("control_after_generate"))) + int(bool(opts.get("image_upload")))


def ui_to_api(workflow: dict, object_info: dict | None = None) -> dict:
    """Convert a UI-format workflow to an API prompt, widget order from ``/object_info``.

    ``object_info`` is a server's ``GET /object_info`` answer; without it the same information is
    computed in-process. Unknown node types raise (a missing pack or a renamed id).
    """
    links = {l[0]: l for l in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in _FRONTEND_ONLY or node.get("mode", 0) in (2, 4):
            if node["type"] in ("PrimitiveNode", "Reroute"):
                raise NotImplementedError(f"{node['type']} nodes are not supported by this converter")
            continue
        if object_info is not None and node["type"] not in object_info:
            raise KeyError(f"node type {node['type']} is not registered on the server")
        info = object_info[node["type"]] if object_info is not None else node_info(node["type"])
        linked = {}
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                link = links[inp["link"]]
                linked[inp["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values") or [])
        inputs = {}
        order = info["input_order"]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name in order.get("required", []) + order.get("optional", []):
            spec = specs[name]
            if _is_widget(spec):
                if not values:
                    raise ValueError(f"node {node['id']} ({node['type']}): widgets_values too short at '{name}'")
                value = values.pop(0)
                del values[:_extra_widget_values(spec)]
                inputs[name] = linked.get(name, value)
            elif name in linked:
                inputs[name] = linked[name]
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} unused widgets_values {values}")
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title", node["type"])}}
    return prompt


def example_workflows() -> list[Path]:
    return sorted((PACK_DIR / "example_workflows").glob("*.json"))


def prepare_workflow_assets(prompt: dict) -> None:
    """Create what a shipped workflow expects on a user's machine: its checkpoint files (random
    weights, detectable kind from the name) and its ``LoadImage`` input files (a synthetic image)."""
    for node in prompt.values():
        if node["class_type"] in ("CheckpointLoaderSimple", "ImageOnlyCheckpointLoader"):
            ckpt = node["inputs"]["ckpt_name"]
            kind = "sd15_inpaint" if "inpaint" in ckpt.lower() else "sd15"
            make_checkpoint(kind, name=ckpt)
        if node["class_type"] == "LoadImage":
            name = node["inputs"]["image"]
            if not (_state["work"] / "input" / name).exists():
                put_input_image(synthetic_image(1, 128, 128)[0], name)


def synthetic_image(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth colourful IMAGE [B,H,W,3] in 0..1 with some structure (gradients + a disc)."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height).view(1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, width)
    phase = torch.rand(batch, 3, 1, 1, generator=g) * 6.28
    img = torch.stack([0.5 + 0.4 * torch.sin(6 * xs + 3 * ys + phase[:, c]) for c in range(3)], dim=-1)
    disc = (((xs - 0.5) ** 2 + (ys - 0.5) ** 2) < 0.04).float().unsqueeze(-1)
    return (img * (1 - disc) + disc * torch.tensor([0.9, 0.2, 0.1])).clamp(0, 1).float()


def init_for_bench(threads: int) -> dict:
    """What every ComfyUI benchmark does first: require COMFYUI_PATH, initialise ComfyUI, no
    progress bars, ``threads`` torch threads."""
    import sys

    if comfyui_path() is None:
        sys.exit("Set COMFYUI_PATH to a ComfyUI checkout.")
    state = init()
    import comfy.utils

    comfy.utils.set_progress_bar_enabled(False)
    torch.set_num_threads(threads)
    return state
