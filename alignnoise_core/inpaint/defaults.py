"""Node defaults of the inpainting samplers (one place; the ComfyUI nodes import these) and their cost.

Chosen on the exact Gaussian model (``bench/bench_inpaint_exact.py``, 50-step SIGMAS) to be affordable:
see each entry's comment for its cost in model evaluations (NFE) at 50 steps.
"""

from __future__ import annotations

from .schedule import schedule_nfe

DEFAULTS = {
    # RePaint, j = 10, r = 5 over the given SIGMAS: 210 NFE at 50 steps (4.2x a plain run); the paper's
    # 250-step, j = r = 10 setting costs 2,410. r = 3 (130 NFE) and r = 10 (410 NFE) measured in the bench notes.
    "repaint": dict(jump_length=10, jump_n_sample=5, schedule="fixed", eta=1.0, adaptive_every=5,
                    adaptive_length=5, adaptive_u_min=3, adaptive_u_max=6, adaptive_phase=0.6),
    # DDNM (the reference's η = 0.85) with time travel l = 10, s = 5 (the reference config has it off;
    # without it DDNM does not reach 2x the built-in on the outpaint border): 210 NFE at 50 steps.
    "ddnm": dict(eta=0.85, travel_length=10, travel_repeat=5, sigma_y=0.0),
    # DiffPIR (the reference's λ = 1, ζ = 1; σ_n re-tuned for latents, see diffpir.py): 50 NFE.
    "diffpir": dict(lam=1.0, sigma_n=0.1, zeta=1.0),
    # ΠGDM: w = 3, η = 0.5 (RED-diff: w = 1, η = 0; re-tuned on the exact model): 50 NFE + 50 VJPs.
    "pigdm": dict(weight=3.0, eta=0.5),
    # MCG: squared residual, w = 0.5 (re-tuned), DDPM step: 50 NFE + 50 VJPs.
    "mcg": dict(step=0.5, eta=1.0),
}


def expected_nfe(method: str, n_steps: int, **params) -> int:
    """Model evaluations of ``method`` over ``n_steps`` (= len(sigmas) − 1) with ``params`` over the defaults.
    For ``repaint`` with ``schedule="adaptive"`` this is the upper bound (every resampling runs)."""
    if method not in DEFAULTS:
        raise ValueError(f"unknown method {method!r}; one of {sorted(DEFAULTS)}")
    p = {**DEFAULTS[method], **params}
    if method == "repaint":
        if p["schedule"] == "adaptive":
            every, length, u_max = p["adaptive_every"], p["adaptive_length"], p["adaptive_u_max"]
            triggers = [n for n in range(1, n_steps) if n % every == 0 and n >= length
                        and n <= p["adaptive_phase"] * n_steps]
            return n_steps + len(triggers) * (u_max - 1) * length
        return schedule_nfe(n_steps, p["jump_length"], p["jump_n_sample"])
    if method == "ddnm":
        return schedule_nfe(n_steps, p["travel_length"], p["travel_repeat"])
    return n_steps
