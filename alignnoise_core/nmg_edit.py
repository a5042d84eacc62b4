"""Two-branch Noise Map Guidance editing (host-free): the paper's editing path.

``hansam95/NMG`` (``NMGPipeline.__call__``) edits with a batch of two branches that both start from
the inverted latent:

- the **source** branch (source prompt) gets Step A, the noise-map guidance of :func:`~.nmg.step_a`,
  then Step B, the text-guided DDIM double step at the same t; it reconstructs the photo;
- the **edit** branch (target prompt) gets Step B only, with the attention controller
  (Prompt-to-Prompt or MasaCtrl) injecting the source branch's attention into it.

Step B evaluates both branches in one CFG batch (the controller needs both at the same layer), and
the controller's ``after_step`` (Prompt-to-Prompt's local blend) runs on the new latents.
``guide_edit_branch=True`` also applies Step A to the edit branch (the reference's ``recon`` applies
it to every item): not the paper's editing path, but with identical prompts the edit then equals the
reconstruction exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import nmg, nmg_maps
from .attention_control import AttentionController

PairEpsFn = Callable[[torch.Tensor, float], torch.Tensor]  # ([2B, C, H, W] source rows then edit rows, sigma)


@dataclass
class EditResult:
    """The two branches after the last step (VE latents at the schedule's last sigma)."""

    edited: torch.Tensor
    reconstruction: torch.Tensor


def nmg_edit_step(
    x_src: torch.Tensor,
    x_tgt: torch.Tensor,
    sigma: float,
    sigma_next: float,
    target_next: torch.Tensor,
    predict_eps_uncond: nmg.EpsFn,
    predict_eps_text_pair: PairEpsFn,
    controller: AttentionController,
    step: int,
    guide_edit_branch: bool = False,
    grad_scale: float = nmg.DEFAULT_GRAD_SCALE,
    noise_map_scale: float = nmg.DEFAULT_NOISE_MAP_SCALE,
    loss: str = "l1",
    reference_numel: Optional[int] = nmg.REFERENCE_NUMEL,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One transition sigma -> sigma_next of both branches; returns ``(x_src_next, x_tgt_next)``.

    Args:
        x_src, x_tgt: the source and edit latents ``[B, C, H, W]`` at ``sigma`` (VE).
        target_next: the noise map at ``sigma_next``.
        predict_eps_uncond: Step A's null-prompt prediction (differentiable; no attention control).
        predict_eps_text_pair: Step B's CFG prediction of ``cat([source rows, edit rows])`` with the
            source prompt on the first half, the target prompt on the second, and the controller on.
        controller: its ``step`` is set here; ``after_step`` is applied to the edit latents.
        guide_edit_branch: Step A on the edit branch too (see the module docstring).
        Other arguments as in :func:`~.nmg.step_a`.
    """
    b = x_src.shape[0]
    guided = torch.cat([x_src, x_tgt]) if guide_edit_branch else x_src
    targets = torch.cat([target_next, target_next]) if guide_edit_branch else target_next
    a = nmg.step_a(guided, sigma, sigma_next, targets, predict_eps_uncond, grad_scale, noise_map_scale, loss,
                   reference_numel)
    x_nm = nmg.rescale_level(a.x_guided, sigma_next, sigma)
    x_b = x_nm if guide_edit_branch else torch.cat([x_nm, x_tgt.to(x_nm)])
    controller.step = int(step)
    eps = predict_eps_text_pair(x_b, float(sigma)).detach().to(x_b)
    x_next = nmg.ddim_step(x_b, eps, sigma, sigma_next)
    src_next, tgt_next = x_next[:b], x_next[b:]
    return src_next, controller.after_step(src_next, tgt_next, int(step))


def nmg_edit_sample(
    maps: nmg_maps.NoiseMaps,
    predict_eps_uncond: nmg.EpsFn,
    predict_eps_text_pair: PairEpsFn,
    controller: AttentionController,
    guide_edit_branch: bool = False,
    grad_scale: float = nmg.DEFAULT_GRAD_SCALE,
    noise_map_scale: float = nmg.DEFAULT_NOISE_MAP_SCALE,
    loss: str = "l1",
    reference_numel: Optional[int] = nmg.REFERENCE_NUMEL,
    x_start: Optional[torch.Tensor] = None,
    callback: Optional[Callable[[int, int], None]] = None,
) -> EditResult:
    """The full two-branch edit from the inverted latent over the maps' schedule.

    Both branches start from ``x_start`` (default ``maps.latents[0]``, the inverted latent; pass it
    moved to the model's device); every step is :func:`nmg_edit_step`.
    """
    nmg.validate_params(grad_scale, noise_map_scale, 0.0, loss, 0.0, 1.0)
    x_src = (maps.latents[0] if x_start is None else x_start).detach().float().clone()
    x_tgt = x_src.clone()
    total = maps.steps
    for i in range(total):
        sig, sig_next = float(maps.sigmas[i]), float(maps.sigmas[i + 1])
        target = maps.latents[i + 1].to(x_src)
        x_src, x_tgt = nmg_edit_step(x_src, x_tgt, sig, sig_next, target, predict_eps_uncond, predict_eps_text_pair,
                                     controller, i, guide_edit_branch, grad_scale, noise_map_scale, loss,
                                     reference_numel)
        if callback is not None:
            callback(i + 1, total)
    return EditResult(edited=x_tgt, reconstruction=x_src)
