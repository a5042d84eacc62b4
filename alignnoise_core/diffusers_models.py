"""Loading a diffusers ``StableDiffusionInpaintPipeline`` for the command line: device and dtype,
local directories or Hugging Face ids (checked before the download), and the scheduler choice."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Optional

import torch

logger = logging.getLogger("alignnoise")

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-inpainting"


def resolve_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """``auto``: CUDA with float16 when available, else CPU with float32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"Unknown device {device!r} (use auto, cpu, cuda, cuda:1, mps ...).") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu.")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"--device {device}: MPS is not available on this machine; use --device cpu.")
    names = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float32": torch.float32, "fp32": torch.float32}
    if dtype == "auto":
        dt = torch.float16 if dev.type == "cuda" else torch.float32
    elif dtype in names:
        dt = names[dtype]
    else:
        raise ValueError(f"Unknown dtype {dtype!r}; use auto, float16, bfloat16 or float32.")
    return dev, dt


def is_local_model(model: str) -> bool:
    """A local directory, or something that can only be a path (a hub id is exactly ``owner/name``)."""
    if Path(model).expanduser().exists():
        return True
    return (
        Path(model).expanduser().is_absolute()
        or model.startswith((".", "~"))
        or "\\" in model
        or model.endswith("/")
        or model.count("/") != 1
    )


def _class_name_of(model: str, local: bool) -> Optional[str]:
    """``_class_name`` of the pipeline's ``model_index.json`` (None if it cannot be read)."""
    if local:
        index = Path(model).expanduser() / "model_index.json"
        try:
            return json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError):
            return None
    try:
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.load_config(model).get("_class_name")
    except Exception:  # noqa: BLE001 - the full load below reports the real error
        return None


def check_model_source(model: str) -> tuple[bool, Optional[str]]:
    """Cheap checks of ``--model`` before loading: a local directory must exist and be a diffusers
    pipeline, and the pipeline class (``model_index.json``) must be an inpainting one.

    Returns:
        ``(is_local, class_name or None)``.
    """
    local = is_local_model(model)
    if local:
        path = Path(model).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"Model directory not found: {path}. Pass a diffusers inpainting pipeline directory (with "
                f"model_index.json) or a model id such as {DEFAULT_MODEL}."
            )
        if path.is_file():
            raise ValueError(
                f"Model {path} is a file; pass a diffusers pipeline directory (with model_index.json). Single-file "
                "checkpoints can be converted with diffusers' StableDiffusionInpaintPipeline.from_single_file(...)"
                ".save_pretrained(DIR)."
            )
        if not (path / "model_index.json").exists():
            raise ValueError(f"{path} is not a diffusers pipeline directory (no model_index.json inside).")
    cls_name = _class_name_of(model, local)
    if cls_name is not None and "Inpaint" not in cls_name:
        raise ValueError(
            f"Model {model} is a {cls_name}, not an inpainting pipeline. AlignNoise needs an inpainting model "
            f"(9-channel UNet), e.g. {DEFAULT_MODEL} or stable-diffusion-v1-5/stable-diffusion-inpainting."
        )
    return local, cls_name


def load_inpaint_pipeline(model: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto"):
    """Load a diffusers ``StableDiffusionInpaintPipeline`` from a model id or a local directory.

    On a machine with internet, a model id is downloaded on first use into the Hugging Face cache
    (``stabilityai/stable-diffusion-2-inpainting``: about 5 GB). Any SD1.x/SD2.x inpainting pipeline
    directory works (9-channel UNet).

    Raises:
        FileNotFoundError: a local path that does not exist.
        ValueError: the model is not an inpainting pipeline (the message names its class), or the
            device/dtype is unusable.
        OSError: diffusers could not load the model (offline, unknown id ...), with a hint.
    """
    dev, dt = resolve_device_dtype(device, dtype)
    local, cls_name = check_model_source(model)
    from diffusers import StableDiffusionInpaintPipeline

    try:
        with warnings.catch_warnings():  # diffusers >= 0.36 renamed torch_dtype to dtype; keep >= 0.30 working
            warnings.simplefilter("ignore", FutureWarning)
            pipe = StableDiffusionInpaintPipeline.from_pretrained(str(Path(model).expanduser()) if local else model,
                                                                  torch_dtype=dt)
    except (OSError, EnvironmentError) as exc:
        hint = "" if local else (f" (no local directory {model!r} exists, so it was taken as a Hugging Face model "
                                 "id; a model id needs internet on first use, or pass a local pipeline directory)")
        raise OSError(f"Could not load model {model}{hint}: {exc}") from exc
    in_ch = pipe.unet.config.in_channels
    if in_ch != 9:
        raise ValueError(
            f"Model {model} ({cls_name or type(pipe).__name__}) has a {in_ch}-channel UNet, not an inpainting UNet "
            f"(9 channels). Use an inpainting model such as {DEFAULT_MODEL}."
        )
    for part in ("unet", "vae", "text_encoder"):  # inference only: no weight gradients anywhere
        if getattr(pipe, part, None) is not None:
            getattr(pipe, part).requires_grad_(False)
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    logger.info("Loaded %s (%s) on %s, %s", model, type(pipe).__name__, dev, str(dt).replace("torch.", ""))
    return pipe


#: ``--scheduler`` names -> diffusers classes (built from the model's own scheduler config).
SCHEDULERS = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def set_scheduler(pipe, name: str = "model"):
    """Swap the pipeline's scheduler for another diffusers scheduler built from its config.

    ``model`` keeps the model's own (PNDM for SD2-inpainting, the reference's choice).
    """
    if name == "model":
        return pipe
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; choose model or one of {sorted(SCHEDULERS)}.")
    import diffusers

    pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)
    return pipe

