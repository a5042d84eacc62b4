"""The one module of ``alignnoise_core`` that talks to ComfyUI internals.

Every ``comfy`` import happens lazily inside a function, so ``alignnoise_core`` imports (and its math
is tested) without ComfyUI. Node files call these helpers instead of reaching into ComfyUI themselves.

Sections: shared primitives (this block), then one section per feature, each marked with a banner.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

log = logging.getLogger("alignnoise")


# --------------------------------------------------------------------------------------------------
# Shared primitives
# --------------------------------------------------------------------------------------------------


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
    import comfy.sample

    return comfy.sample.prepare_noise(latent["samples"], seed, latent.get("batch_index"))


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


class Progress:
    """ComfyUI progress bar that also honours Cancel on every update."""

    def __init__(self, total: int):
        import comfy.utils

        self.total = int(total)
        self.bar = comfy.utils.ProgressBar(self.total)

    def update(self, n: int = 1) -> None:
        check_interrupt()
        self.bar.update(n)


def intermediate_device() -> torch.device:
    import comfy.model_management

    return comfy.model_management.intermediate_device()


def model_sampling(model) -> Any:
    """The (possibly object-patched) ``model_sampling`` of a ModelPatcher."""
    return model.get_model_object("model_sampling")


def latent_format(model) -> Any:
    return model.get_model_object("latent_format")


# Families whose UNet is ComfyUI's ``openaimodel.UNetModel`` with attn1 patch points we can capture.
_SUPPORTED_CONFIGS = {
    "SD15": "SD1.x",
    "SD20": "SD2.x",
    "SD21UnclipL": "SD2.x",
    "SD21UnclipH": "SD2.x",
    "SDXL": "SDXL",
    "SDXLRefiner": "SDXL",
    "SSD1B": "SDXL",
    "Segmind_Vega": "SDXL",
    "KOALA_700M": "SDXL",
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
    unet_config = base.model_config.unet_config
    in_channels = int(unet_config.get("in_channels", 4))
    return ModelInfo(
        config_name=config_name,
        family=family,
        is_inpaint=len(getattr(base, "concat_keys", ())) > 0,
        in_channels=in_channels,
        latent_channels=int(latent_format(model).latent_channels),
    )


def differentiable_clone(model):
    """A ``model.clone()`` whose weights can be used under autograd inside ComfyUI.

    Nodes run under ``torch.inference_mode()``, so loaded weights are inference tensors that autograd
    cannot save. An identity weight wrapper on every ``comfy.ops`` layer makes ``cast_bias_weight``
    produce a fresh, normal copy of each weight per forward (the trick of ``nodes_train.py``). The
    returned clone must be released with :func:`release_model` when done.
    """
    m = model.clone()

    def identity(w):
        return w

    for name, module in m.model.named_modules():
        if not hasattr(module, "weight_function"):
            continue
        if getattr(module, "weight", None) is not None:
            m.add_weight_wrapper(f"{name}.weight", identity)
        if getattr(module, "bias", None) is not None:
            m.add_weight_wrapper(f"{name}.bias", identity)
    return m


def release_model(m) -> None:
    """Unload a patched clone so none of its wrappers stay attached to the shared UNet modules."""
    import comfy.model_management as mm

    for i in reversed(range(len(mm.current_loaded_models))):
        loaded = mm.current_loaded_models[i]
        if loaded.model is m:
            loaded.model_unload()
            mm.current_loaded_models.pop(i)


@contextlib.contextmanager
def grad_enabled():
    """Leave ComfyUI's ``inference_mode`` and enable autograd for the enclosed block."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def differentiable_attention_override(model_options: dict) -> dict:
    """Return model_options whose attention calls use a backend with a backward pass.

    Sage attention (``--use-sage-attention``) has no backward; route every ``optimized_attention``
    call through ``attention_pytorch`` while we differentiate. Copy-on-write: the input is untouched.
    """
    import comfy.ldm.modules.attention as attention
    import comfy.model_patcher

    mo = comfy.model_patcher.create_model_options_clone(model_options)
    to = dict(mo.get("transformer_options", {}))

    def override(func, *args, **kwargs):
        return attention.attention_pytorch(*args, **kwargs)

    to["optimized_attention_override"] = override
    mo["transformer_options"] = to
    return mo


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

    def calc_cond_batch(self, names: list[str], x: torch.Tensor, sigma: torch.Tensor, model_options=None):
        """x0 predictions of the named conds (``None`` entries allowed), batched as ComfyUI does."""
        import comfy.samplers

        conds = [self.conds.get(n) if n is not None else None for n in names]
        return comfy.samplers.calc_cond_batch(
            self.base_model, conds, x, sigma, self.model_options if model_options is None else model_options
        )


def run_sampler(
    model,
    positive,
    negative,
    cfg: float,
    latent_image: torch.Tensor,
    sigmas: torch.Tensor,
    fn: Callable[[SamplerContext], torch.Tensor],
    noise: torch.Tensor | None = None,
    denoise_mask: torch.Tensor | None = None,
    seed: int = 0,
    guider=None,
    callback=None,
):
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
    import comfy.sample
    import comfy.samplers

    class _FnSampler(comfy.samplers.Sampler):
        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                   disable_pbar=False):
            ctx = SamplerContext(
                guider=model_wrap,
                base_model=model_wrap.inner_model,
                conds=model_wrap.conds,
                model_options=extra_args["model_options"],
                extra_args=extra_args,
                sigmas=sigmas,
                noise=noise,
                latent_image=latent_image,
                denoise_mask=denoise_mask,
                callback=callback,
            )
            return fn(ctx)

    if guider is None:
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
    latent_image = comfy.sample.fix_empty_latent_channels(guider.model_patcher, latent_image)
    if noise is None:
        noise = torch.zeros_like(latent_image)
    return guider.sample(noise, latent_image, _FnSampler(), sigmas, denoise_mask=denoise_mask, callback=callback,
                         disable_pbar=True, seed=seed)


def calculate_sigmas(model, scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """The sigmas ``BasicScheduler`` would produce for this model (same denoise handling)."""
    import comfy.samplers

    total = steps if denoise >= 1.0 else int(steps / denoise)
    sigmas = comfy.samplers.calculate_sigmas(model_sampling(model), scheduler, total).cpu()
    return sigmas[-(steps + 1):]


def scheduler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.SCHEDULER_NAMES)


def sampler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.SAMPLER_NAMES)


# --------------------------------------------------------------------------------------------------
# Stage 2: FrequencyNoiseRefine (issue 4). Math in ``frequency.py``; this is the ComfyUI glue.
# --------------------------------------------------------------------------------------------------


def sampling_parameterization(model, feature: str = "FrequencyNoiseRefine") -> str:
    """``"eps"`` for models whose sampler state is ``x0 + σ·ε`` (EPS, v-pred, EDM, x0), ``"flow"``
    for rectified-flow (CONST) models; a clear error for anything else."""
    import comfy.model_sampling as cms

    ms = model_sampling(model)
    if isinstance(ms, cms.CONST):
        return "flow"
    if isinstance(ms, cms.EPS):
        return "eps"
    raise ValueError(
        f"{feature} does not know how the '{type(ms).__name__}' model sampling adds noise; it supports "
        f"eps/v-prediction models (SD1.x, SD2.x, SDXL) and rectified-flow models (SD3, Flux)."
    )


class RefinedNoise:
    """A ComfyUI ``NOISE`` that makes the sampler start exactly from a refined latent.

    ``SamplerCustomAdvanced`` starts from ``x = noise_scaling(σ0, noise, latent_in)`` (``latent_in``
    = ``process_latent_in(latent)``, or zeros for an all-zero latent). ``generate_noise`` inverts that
    for whatever latent the sampler is given, so the second pass may be fed an empty latent, the
    first pass's output, or the inpaint latent: its first state is ``x = sampler_start(z', σ0)`` in
    every case, as long as its sigmas start at ``σ0`` (the model's sigma_max unless ``sigmas`` was
    given to the node).

    Args:
        refined: ``z'``, the refined latent in normalised (VP) form, CPU float32.
        sigma: ``σ0``, the first sigma of the second pass.
        max_denoise: whether ``σ0`` is the model's sigma_max (the sampler then scales noise by
            ``√(1+σ²)``), decided exactly as ``comfy.samplers.Sampler.max_denoise``.
        parameterization: ``"eps"`` or ``"flow"``.
        process_in: the model's ``latent_format.process_in``.
        seed: reported to the sampler (ancestral/SDE samplers draw their extra noise from it).
    """

    def __init__(self, refined: torch.Tensor, sigma: float, max_denoise: bool, parameterization: str,
                 process_in: Callable[[torch.Tensor], torch.Tensor], seed: int):
        self.refined = refined.detach().to("cpu", torch.float32).clone()
        self.sigma = float(sigma)
        self.max_denoise = bool(max_denoise)
        self.parameterization = parameterization
        self.process_in = process_in
        self.seed = int(seed)

    def start_state(self) -> torch.Tensor:
        """The model-space state the sampler will start from (``x = z'·√(1+σ²)`` for eps models)."""
        from . import frequency

        return frequency.sampler_start(self.refined.double(), self.sigma, self.parameterization).float()

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        from . import frequency

        samples = input_latent["samples"]
        if tuple(samples.shape) != tuple(self.refined.shape):
            raise ValueError(
                f"FrequencyNoiseRefine made its NOISE for a latent of shape {tuple(self.refined.shape)}, but the "
                f"second sampler got {tuple(samples.shape)}. Give the second SamplerCustomAdvanced a latent of the "
                f"same size and batch as the first pass (e.g. the first pass's output)."
            )
        latent = samples.detach().to("cpu", torch.float64)
        # Mirror CFGGuider.inner_sample: an all-zero latent is not shifted by process_latent_in.
        latent_in = self.process_in(latent) if torch.count_nonzero(latent) > 0 else torch.zeros_like(latent)
        x_start = frequency.sampler_start(self.refined.double(), self.sigma, self.parameterization)
        noise = frequency.noise_for_start(x_start, latent_in.double(), self.sigma, self.parameterization,
                                          self.max_denoise)
        return noise.to(torch.float32)


def frequency_refine(model, samples: dict, noise, mask: torch.Tensor | None = None, filter_type: str = "butterworth",
                     d_s: float = 0.25, order: int = 4, d_t: float = 0.25, seed: int = 0,
                     sigmas: torch.Tensor | None = None) -> tuple[RefinedNoise, dict]:
    """AlignNoise stage 2 in ComfyUI: re-noise the first pass with its initial NOISE, mix frequencies
    in the outpainted region, and return a NOISE for the second pass plus a small info dict.

    Args:
        model: the MODEL (its model_sampling gives sigma_max and the parameterisation, its latent
            format ``process_latent_in``).
        samples: the first pass's LATENT (``output`` or ``denoised_output`` of the first sampler).
        noise: the first pass's NOISE; ``noise.generate_noise(samples)`` must give its initial noise.
        mask: 1 = outpainted (MASK, any resolution); falls back to ``samples["noise_mask"]``; with
            neither, the whole latent is refined (plain FreeInit).
        sigmas: optional schedule of the second pass; its first sigma is the re-noising level.
    """
    from . import frequency

    kind = sampling_parameterization(model)
    ms = model_sampling(model)
    sigma_max = float(ms.sigma_max)
    if sigmas is not None and len(sigmas) > 0:
        sigma0 = float(sigmas[0])
        if sigma0 <= 0:
            raise ValueError("The sigmas given to FrequencyNoiseRefine start at 0: nothing to re-noise.")
    else:
        sigma0 = sigma_max
    import math

    max_denoise = math.isclose(sigma_max, sigma0, rel_tol=1e-05) or sigma0 > sigma_max  # as Sampler.max_denoise
    if kind == "flow":
        sigma0 = min(sigma0, 1.0)
    lat = samples["samples"]
    if getattr(lat, "is_nested", False):
        raise ValueError("FrequencyNoiseRefine does not support nested (multi-part) latents.")
    if lat.ndim not in (4, 5):
        raise ValueError(f"FrequencyNoiseRefine needs a 4-D or 5-D LATENT, got shape {tuple(lat.shape)}.")
    initial = noise.generate_noise(samples)
    if tuple(initial.shape) != tuple(lat.shape):
        raise ValueError(
            f"The NOISE gives shape {tuple(initial.shape)} for this latent of shape {tuple(lat.shape)}; connect the "
            f"NOISE that drove the first pass."
        )
    if mask is None:
        mask = samples.get("noise_mask")
    lf = latent_format(model)
    x0 = lf.process_in(lat.detach().to("cpu", torch.float64))
    refined = frequency.refine(
        x0, initial.detach().to("cpu", torch.float64), sigma0, mask=mask, filter_type=filter_type, d_s=d_s,
        order=order, d_t=d_t, seed=seed, parameterization=kind,
    )
    info = {"sigma": sigma0, "max_denoise": max_denoise, "parameterization": kind, "masked": mask is not None}
    return RefinedNoise(refined, sigma0, max_denoise, kind, lf.process_in, seed), info
