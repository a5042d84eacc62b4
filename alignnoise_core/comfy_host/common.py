"""Primitives every ComfyUI feature module uses: NOISE objects, progress and Cancel, model facts,
the gradient session, and one sampling pass through ComfyUI's own guider plumbing."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.sample
import comfy.samplers
import comfy.utils
import node_helpers
import torch
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, UNetModel, Upsample

from ..autograd_safety import FrozenConstants

log = logging.getLogger("alignnoise")


class TensorNoise:
    """A ComfyUI ``NOISE`` that returns a precomputed tensor.

    ComfyUI's NOISE protocol is an object with an int ``seed`` and ``generate_noise(latent_dict)``
    returning a CPU tensor shaped like ``latent_dict["samples"]``. ``seed`` is forwarded to samplers
    that draw extra noise (ancestral/SDE).

    Args:
        noise: the unit-variance noise, shaped like the latent it will be used with.
        seed: the seed reported to the sampler.
        source: a short human-readable origin, shown in error messages.
    """

    def __init__(self, noise: torch.Tensor, seed: int, source: str = "alignnoise"):
        # Detached CPU float copy: holds no reference to autograd graphs or patched model state.
        self.noise = noise.detach().to("cpu", torch.float32).clone()
        self.seed = int(seed)
        self.source = source

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = input_latent["samples"]
        if tuple(samples.shape) != tuple(self.noise.shape):
            raise ValueError(
                f"The {self.source} NOISE was made for a latent of shape {tuple(self.noise.shape)} but the "
                f"sampler got a latent of shape {tuple(samples.shape)}. Feed the sampler the same latent "
                f"(same size and batch) that was given to the node that made this noise."
            )
        return self.noise.clone().to(samples.dtype)


def random_noise(latent: dict, seed: int) -> torch.Tensor:
    """Exactly ComfyUI's ``RandomNoise(seed).generate_noise(latent)`` (CPU generator, batch_index aware)."""
    return comfy.sample.prepare_noise(latent["samples"], seed, latent.get("batch_index"))


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()


class Progress:
    """ComfyUI progress bar that also honours Cancel on every update."""

    def __init__(self, total: int):
        self.total = int(total)
        self.bar = comfy.utils.ProgressBar(self.total)

    def update(self, n: int = 1) -> None:
        check_interrupt()
        self.bar.update(n)


def intermediate_device() -> torch.device:
    return comfy.model_management.intermediate_device()


def model_sampling(model) -> Any:
    """The (possibly object-patched) ``model_sampling`` of a ModelPatcher."""
    return model.get_model_object("model_sampling")


def latent_format(model) -> Any:
    return model.get_model_object("latent_format")


# Families whose UNet is ComfyUI's ``openaimodel.UNetModel`` with attn1 patch points we can capture.
_SUPPORTED_CONFIGS = {
    "SD15": "SD1.x", "SD20": "SD2.x", "SD21UnclipL": "SD2.x", "SD21UnclipH": "SD2.x",
    "SDXL": "SDXL", "SDXLRefiner": "SDXL", "SSD1B": "SDXL", "Segmind_Vega": "SDXL", "KOALA_700M": "SDXL",
    "KOALA_1B": "SDXL",
}


@dataclass(frozen=True)
class ModelInfo:
    """What the pack needs to know about a ComfyUI model.

    Attributes:
        config_name: ComfyUI's model config class name (``SD15``, ``SD20``, ``SDXL``, ...).
        family: ``"SD1.x"``, ``"SD2.x"`` or ``"SDXL"``.
        is_inpaint: True for 9-channel inpainting UNets (mask + masked image concatenated).
        in_channels: UNet input channels (4, or 9 for inpainting models).
        latent_channels: channels of the latent the sampler works on (4).
    """

    config_name: str
    family: str
    is_inpaint: bool
    in_channels: int
    latent_channels: int


def is_inpaint_model(model) -> bool:
    """9-channel inpainting UNet (its concat conditioning carries the mask and masked image)."""
    return len(getattr(model.model, "concat_keys", ())) > 0


def model_info(model, feature: str = "this node") -> ModelInfo:
    """Describe a ComfyUI MODEL, or raise a clear error if ``feature`` does not support it."""
    base = model.model
    config_name = type(base.model_config).__name__
    family = _SUPPORTED_CONFIGS.get(config_name)
    if family is None:
        raise ValueError(
            f"{feature} supports SD1.x, SD2.x and SDXL UNet models (and their inpainting variants), but "
            f"got a '{config_name}' model ({type(base).__name__}). Load an SD1.5/SD2/SDXL checkpoint."
        )
    return ModelInfo(
        config_name=config_name,
        family=family,
        is_inpaint=is_inpaint_model(model),
        in_channels=int(base.model_config.unet_config.get("in_channels", 4)),
        latent_channels=int(latent_format(model).latent_channels),
    )


def sampling_parameterization(model, feature: str) -> str:
    """``"eps"`` for models whose sampler state is ``x0 + σ·ε`` (EPS, v-pred, EDM, x0), ``"flow"``
    for rectified-flow (CONST) models; a clear error for anything else."""
    ms = model_sampling(model)
    if isinstance(ms, comfy.model_sampling.CONST):
        return "flow"
    if isinstance(ms, comfy.model_sampling.EPS):
        return "eps"
    raise ValueError(
        f"{feature} does not know how the '{type(ms).__name__}' model sampling adds noise; it supports "
        f"eps/v-prediction models (SD1.x, SD2.x, SDXL) and rectified-flow models (SD3, Flux)."
    )


def transformer_layers(model, feature: str = "this node") -> list:
    """Every transformer layer of an openaimodel UNet in execution order, with its resolution level.

    Level 0 is the latent (1/8 px), level 2 the 1/32-pixel level. Found by walking the UNet in
    execution order (Downsample after an input block, Upsample at the end of an output block), so it
    works for SD1.x, SD2.x, SDXL and pruned variants alike.

    Returns:
        ``[((block_name, number, transformer_index), level), ...]``; the key is the 3-tuple the
        attention replace patches are keyed by.
    """
    dm = model.model.diffusion_model
    if not isinstance(dm, UNetModel):
        raise ValueError(f"{feature} needs an SD1.x/SD2.x/SDXL UNet, got {type(dm).__name__}")
    out: list = []
    level = 0

    def walk(block, layers):
        nonlocal level
        for layer in layers:
            if isinstance(layer, SpatialTransformer):
                out.extend(((block[0], block[1], j), level) for j in range(len(layer.transformer_blocks)))
            elif isinstance(layer, Downsample):
                level += 1
            elif isinstance(layer, Upsample):
                level -= 1

    for i, blk in enumerate(dm.input_blocks):
        walk(("input", i), blk)
    walk(("middle", 0), dm.middle_block)
    for i, blk in enumerate(dm.output_blocks):
        walk(("output", i), blk)
    return out


# --------------------------------------------------------------------------------------------------
# Gradients inside a node (nodes run under torch.inference_mode())
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def gradient_session(base_model):
    """Autograd w.r.t. latents through a frozen ComfyUI model, for the enclosed block.

    - leaves the executor's ``inference_mode`` and enables grad;
    - :class:`~alignnoise_core.autograd_safety.FrozenConstants` gives autograd private copies of
      weights (inference tensors, or views of a cast buffer the next layer reuses), so nothing
      depends on every weight passing through a weight wrapper;
    - ``comfy.model_management.in_training`` (where this ComfyUI has it) sends fused kernels down
      their autograd-safe paths, as core's training code does; restored afterwards;
    - ``requires_grad_(False)`` on the weights (no weight gradients), the flags restored afterwards.
    """
    flags = [(p, p.requires_grad) for p in base_model.parameters()]
    mm = comfy.model_management
    has_flag = hasattr(mm, "in_training")
    previous = getattr(mm, "in_training", None)
    try:
        with torch.inference_mode(False), torch.enable_grad(), FrozenConstants():
            base_model.requires_grad_(False)
            if has_flag:
                mm.in_training = True
            yield
    finally:
        if has_flag:
            mm.in_training = previous
        with torch.inference_mode():  # requires_grad_ on inference tensors is allowed only in inference mode
            for p, flag in flags:
                if p.requires_grad != flag:
                    p.requires_grad_(flag)


def _differentiable_attention(func, *args, **kwargs):
    return comfy_attention.attention_pytorch(*args, **kwargs)


def use_differentiable_attention(model_options: dict) -> dict:
    """model_options whose attention calls all use a backend with a backward pass (sage attention
    has none). Copy-on-write: the input is untouched."""
    mo = comfy.model_patcher.create_model_options_clone(model_options)
    to = dict(mo.get("transformer_options", {}))
    to["optimized_attention_override"] = _differentiable_attention
    mo["transformer_options"] = to
    return mo


def set_differentiable_attention(m) -> None:
    """The same on a ModelPatcher clone, through the official setter where this ComfyUI has it."""
    if hasattr(m, "set_model_optimized_attention"):
        m.set_model_optimized_attention(comfy_attention.attention_pytorch)
    else:
        m.model_options = use_differentiable_attention(m.model_options)


def release_model(m) -> None:
    """Unload a patched clone and remove what ComfyUI's unpatching leaves on the shared UNet modules
    (restored method attributes of object patches), so the model is exactly as before."""
    mm = comfy.model_management
    for i in reversed(range(len(mm.current_loaded_models))):
        loaded = mm.current_loaded_models[i]
        if loaded.model is m:
            loaded.model_unload()
            mm.current_loaded_models.pop(i)
    # Unpatching an object patch of a method stores the original back as an instance attribute (a
    # bound method, i.e. a module <-> method reference cycle); drop it when it is just the class's.
    for key in m.object_patches:
        owner, _, attr = key.rpartition(".")
        mod = comfy.utils.get_attr(m.model, owner) if owner else m.model
        value = vars(mod).get(attr) if hasattr(mod, "__dict__") else None
        if getattr(value, "__self__", None) is mod and getattr(value, "__func__", None) is getattr(type(mod), attr, None):
            delattr(mod, attr)


# --------------------------------------------------------------------------------------------------
# One sampling pass through ComfyUI's plumbing
# --------------------------------------------------------------------------------------------------


@dataclass
class SamplerContext:
    """What a custom sampling function sees inside ComfyUI's guider plumbing (see :func:`run_sampler`).

    Attributes:
        guider: the CFGGuider (``guider(x, sigma * s_in, **extra_args)`` returns CFG x0).
        base_model: the ComfyUI ``BaseModel`` (``model_sampling``, ``process_latent_in`` ...).
        conds: processed conds by name (``"positive"``/``"negative"``) for ``calc_cond_batch``.
        model_options: the run's model_options (copy before changing).
        extra_args: the k-diffusion ``extra_args`` (``model_options``, ``seed``).
        sigmas: the schedule on the load device.
        noise: unit noise on the load device.
        latent_image: the input latent in model space (``process_latent_in`` applied unless all zero).
        denoise_mask: prepared mask (1 = regenerate) or None.
        callback: ComfyUI's preview callback or None.
    """

    guider: Any
    base_model: Any
    conds: dict
    model_options: dict
    extra_args: dict
    sigmas: torch.Tensor
    noise: torch.Tensor
    latent_image: torch.Tensor
    denoise_mask: torch.Tensor | None
    callback: Any

    def calc_cond_batch(self, names: list, x: torch.Tensor, sigma: torch.Tensor, model_options=None):
        """x0 predictions of the named conds (``None`` entries allowed), batched as ComfyUI does."""
        conds = [self.conds.get(n) if n is not None else None for n in names]
        return comfy.samplers.calc_cond_batch(
            self.base_model, conds, x, sigma, self.model_options if model_options is None else model_options
        )


class _FnSampler(comfy.samplers.Sampler):
    """A ComfyUI Sampler that hands the guider's state to a plain function."""

    def __init__(self, fn: Callable[[SamplerContext], torch.Tensor]):
        self.fn = fn

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        return self.fn(SamplerContext(
            guider=model_wrap, base_model=model_wrap.inner_model, conds=model_wrap.conds,
            model_options=extra_args["model_options"], extra_args=extra_args, sigmas=sigmas, noise=noise,
            latent_image=latent_image, denoise_mask=denoise_mask, callback=callback))


def run_sampler(model, positive, negative, cfg: float, latent_image: torch.Tensor, sigmas: torch.Tensor,
                fn: Callable[[SamplerContext], torch.Tensor], noise: torch.Tensor | None = None,
                denoise_mask: torch.Tensor | None = None, seed: int = 0, guider=None, callback=None):
    """Run ``fn(ctx)`` as a sampler through ComfyUI's ``CFGGuider.sample``.

    The guider does the plumbing every sampler gets: GPU loading (lowvram aware), hooks, wrappers,
    cond processing (``c_crossattn``, the 9-channel ``c_concat`` of inpaint models), ``pre_run`` and
    ``cleanup``. ``fn`` returns a model-space latent; like any sampler's result, ComfyUI applies
    ``process_latent_out`` to it.

    Args:
        model: the ModelPatcher (clone it first if you patch it).
        positive, negative: CONDITIONING lists.
        cfg: classifier-free guidance scale used by ``ctx.guider``.
        latent_image: LATENT ``samples`` in latent-out space.
        sigmas: the schedule.
        fn: the sampling function.
        noise: unit noise (zeros if None).
        denoise_mask: LATENT ``noise_mask`` (1 = regenerate) or None.
        seed: forwarded to ``extra_args["seed"]``.
        guider: a prepared guider to use instead of a fresh ``CFGGuider``.
    """
    if guider is None:
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
    latent_image = comfy.sample.fix_empty_latent_channels(guider.model_patcher, latent_image)
    if noise is None:
        noise = torch.zeros_like(latent_image)
    return guider.sample(noise, latent_image, _FnSampler(fn), sigmas, denoise_mask=denoise_mask, callback=callback,
                         disable_pbar=True, seed=seed)


def calculate_sigmas(model, scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """The sigmas ``BasicScheduler`` would produce for this model (same denoise handling)."""
    total = steps if denoise >= 1.0 else int(steps / denoise)
    sigmas = comfy.samplers.calculate_sigmas(model_sampling(model), scheduler, total).cpu()
    return sigmas[-(steps + 1):]


def scheduler_names() -> list:
    return list(comfy.samplers.SCHEDULER_NAMES)


def sampler_names() -> list:
    return list(comfy.samplers.SAMPLER_NAMES)


def inpaint_conditioning(positive, negative, vae, pixels: torch.Tensor, mask: torch.Tensor):
    """What core ``InpaintModelConditioning`` (``noise_mask=True``) returns, for ``pixels [1,H,W,C]``.

    The masked pixels (mask rounded, 1 = generate) are set to 0.5 grey and encoded as
    ``concat_latent_image``; ``concat_mask`` is the mask. 9-channel inpainting UNets read both through
    ``BaseModel.concat_cond``; 4-channel models ignore them and use the latent's ``noise_mask``.
    """
    m = mask.reshape(1, 1, mask.shape[-2], mask.shape[-1]).to(pixels.dtype)
    keep = (1.0 - m.round()).squeeze(1)[..., None]
    grey = (pixels - 0.5) * keep + 0.5
    concat_latent = vae.encode(grey[..., :3])
    latent = {"samples": vae.encode(pixels[..., :3]), "noise_mask": m}
    out = [node_helpers.conditioning_set_values(c, {"concat_latent_image": concat_latent, "concat_mask": m})
           for c in (positive, negative)]
    return out[0], out[1], latent


def outpaint_inputs(positive, negative, vae, pixels: torch.Tensor, mask: torch.Tensor, is_inpaint: bool):
    """Conditioning and LATENT of one outpaint pass on ``pixels [1,H,W,C]`` (``mask``: H x W, 1 = generate):
    9-channel inpainting models get :func:`inpaint_conditioning`, 4-channel models the latent ``noise_mask``."""
    m = mask.reshape(1, 1, mask.shape[-2], mask.shape[-1])
    if is_inpaint:
        return inpaint_conditioning(positive, negative, vae, pixels, m)
    return positive, negative, {"samples": vae.encode(pixels[..., :3]), "noise_mask": m}


def decode_pixels(vae, samples: torch.Tensor, height: int, width: int, channels: int, what: str) -> torch.Tensor:
    """The decoded ``[H, W, channels]`` picture (CPU float32, 0..1) of one outpaint pass; an RGBA request
    gets an opaque alpha. ``what`` names the region in the size error (``"canvas"``, ``"window"``)."""
    decoded = vae.decode(samples)
    decoded = decoded.reshape(-1, *decoded.shape[-3:])[0].to("cpu", torch.float32).clamp(0.0, 1.0)
    if tuple(decoded.shape[:2]) != (height, width):
        raise ValueError(f"The VAE decoded a {decoded.shape[1]}x{decoded.shape[0]} image for a {width}x{height} "
                         f"{what}; use the VAE that matches the model.")
    if channels > decoded.shape[-1]:  # RGBA: the generated area is opaque
        decoded = torch.cat([decoded, torch.ones_like(decoded[..., :channels - decoded.shape[-1]])], dim=-1)
    return decoded[..., :channels]
