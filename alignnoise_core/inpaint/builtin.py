"""An emulation of ComfyUI's built-in ``noise_mask`` inpainting (``comfy/samplers.py::KSamplerX0Inpaint``),
host-free, as the baseline the samplers of this package are measured against.

Before every model call the known region of x is replaced by ``α·y + s·n_fixed`` with ONE fixed
noise for the whole run (the noise that also started the sampler), and the known region of the x0
prediction is replaced by y. ``step="euler"`` is k-diffusion's Euler step; ``step="ddpm"`` the DDPM
ancestral step (ComfyUI's ``ddpm`` in VE; for flow models the same posterior step written in the flow
parameterisation, which is what ComfyUI's VE-only ``DDPMSampler_step`` would need).
"""

from __future__ import annotations

import torch

from .common import finish, prepare, report
from .space import NoiseSpace


@torch.no_grad()
def sample_builtin_inpaint(model, x, sigmas, extra_args=None, callback=None, disable=None, *, known, mask,
                           space: NoiseSpace, generator=None, noise_sampler=None, mask_fn=None, stats=None,
                           noise: torch.Tensor | None = None, step: str = "euler"):
    """ComfyUI's fixed-noise replacement + x0 paste, with an Euler or DDPM step.

    Args:
        noise: the fixed noise (ComfyUI's ``model.noise``); drawn once from the generator if None.
        step: ``"euler"`` or ``"ddpm"``.
    """
    if step not in ("euler", "ddpm"):
        raise ValueError(f"step must be 'euler' or 'ddpm', got {step!r}.")
    extra_args, y, masks, draw, s_in = prepare(x, sigmas, extra_args, known, mask, space, generator,
                                               noise_sampler, mask_fn)
    fixed = draw(sigmas[0], sigmas[0]) if noise is None else noise.to(x)
    n_steps = len(sigmas) - 1
    for i in range(n_steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        m = masks.at(s)
        x = x * m + space.noise_known(y, s, fixed) * (1 - m)
        x0 = model(x, s * s_in, **extra_args) * m + y * (1 - m)
        report(callback, i, x, s, x0)
        if step == "euler":
            x = x + (x - x0) / s * (s_next - s)
        else:
            x = space.ddim_step(x, x0, s, s_next, 1.0, lambda: draw(s, s_next))
    if stats is not None:
        stats.update(nfe=n_steps)
    return finish(x, y, masks.base, space, sigmas, draw)
