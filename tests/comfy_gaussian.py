"""The exact Gaussian latent model (``alignnoise_core.inpaint.gaussian``) as a real ComfyUI MODEL.

A tiny SD1.5 ModelPatcher from ComfyUI's classes whose UNet call is replaced, through
``set_model_unet_function_wrapper`` on a clone, by the closed-form MMSE x0 of a stationary Gaussian
prior in model space (``process_latent_in`` units). For a flow model the clone is first patched by
core's ``ModelSamplingSD3`` node (CONST sampling, shift 1), so ComfyUI samples it as SD3/Flux-type.
Everything else (guider, CFG, SamplerCustomAdvanced, KSamplerX0Inpaint for the built-in samplers) is
ComfyUI's own code. Used by tests/test_comfy_inpaint_samplers.py and bench/bench_inpaint_samplers_comfy.py.
"""

from __future__ import annotations

import torch

import comfy_harness as ch


def gaussian_model(prior, flow: bool = False, in_channels: int = 4):
    """(MODEL, space) for ``prior``: ComfyUI samples the exact denoiser; ``space`` is the core's VE/FLOW."""
    from alignnoise_core.inpaint import FLOW, VE

    base = ch.tiny_model(in_channels)
    if flow:
        from comfy_extras.nodes_model_advanced import ModelSamplingSD3

        with torch.inference_mode():
            (m,) = ModelSamplingSD3().patch(base, shift=1.0)
    else:
        m = base.clone()
    space = FLOW if flow else VE
    calls = {"n": 0}

    def closed_form(apply_model, args):
        calls["n"] += 1
        return prior.denoise(args["input"], args["timestep"], space)

    m.set_model_unet_function_wrapper(closed_form)
    m.gaussian_calls = calls  # evaluation counter for tests and the bench (an attribute of our own clone)
    return m, space


def masks(h: int, w: int, border: int = 4, hole: int = 8) -> dict:
    """Latent-size masks (1 = generate): an outpaint border and a centred inpaint hole."""
    out = torch.ones(h, w)
    out[border:h - border, border:w - border] = 0
    inp = torch.zeros(h, w)
    top, left = (h - hole) // 2, (w - hole) // 2
    inp[top:top + hole, left:left + hole] = 1
    return {"outpaint border": out, "inpaint hole": inp}


def guider(model, cfg: float = 1.0):
    import comfy.samplers

    g = comfy.samplers.CFGGuider(model)
    g.set_conds(ch.fake_conditioning(), ch.fake_conditioning(seed=1))
    g.set_cfg(cfg)
    return g


def run(model, sampler, sigmas, known_model_space: torch.Tensor, mask: torch.Tensor, n: int, seed: int,
        cfg: float = 1.0, fill: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` inpainted samples through SamplerCustomAdvanced, returned in model space [n, C, H, W].

    ``fill`` (e.g. the prior mean) replaces the generated cells of the latent: ComfyUI's start
    ``latent + sqrt(1+σ²)·noise`` would otherwise show every sampler the true values there."""
    base = model.model
    known = known_model_space if fill is None else known_model_space * (1 - mask) + fill.to(known_model_space) * mask
    samples = base.process_latent_out(known.expand(n, *known.shape[1:]).clone())
    latent = {"samples": samples, "noise_mask": mask.reshape(1, 1, *mask.shape[-2:])}
    noise = ch.node_class("RandomNoise").execute(seed).result[0]
    out = ch.node_class("SamplerCustomAdvanced").execute(noise, guider(model, cfg), sampler, sigmas, latent).result[0]
    return base.process_latent_in(out["samples"])
