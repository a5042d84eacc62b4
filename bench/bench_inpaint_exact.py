"""Benchmark the training-free inpainting samplers against the exact posterior of a Gaussian latent model.

Model: ``alignnoise_core.inpaint.gaussian.GaussianLatentPrior`` (a stationary Gaussian 4×16×16 latent,
Gaussian-kernel covariances of length 3-5 cells per channel, unit-scale like SD latents), whose MMSE
denoiser D(x, σ) = E[x0 | x] is exact, so every error below is the sampler's own. One ground-truth
latent is drawn; its known cells are the known latent y (the generated cells of y are set to the prior
mean, as an encoded grey fill would be); the exact conditional mean and variance of the generated
cells are computed in closed form.

Rows, for two masks (``hole``: the centre 8×8 generated; ``border``: a 4-cell outpaint frame) and two
parameterisations (``VE``: an EPS model in ComfyUI's sampler space with SD1.5's 1000-step schedule and
the ``simple`` scheduler; ``FLOW``: CONST, shift 3), 256 samples in one batch, 50 steps:

* ``builtin euler`` / ``builtin ddpm``: ComfyUI's built-in noise_mask inpainting (``KSamplerX0Inpaint``:
  fixed-noise replacement + x0 paste), emulated host-free (``sample_builtin_inpaint``);
* every method of ``alignnoise_core.inpaint`` at its node defaults (``DEFAULTS``), plus RePaint at the
  paper's r = 10 (``repaint r10``, 410 NFE), DDNM in the reference config without time travel
  (``ddnm no travel``, 50 NFE) and RePaint's adaptive schedule: options, not held to the targets;
* ``exact posterior``: 256 draws from the true conditional (the Monte-Carlo floor of the error).

Columns: ``mean err`` = ‖mean of samples − μ_cond‖ / ‖μ_prior − μ_cond‖ over the generated cells
(1 = as good as ignoring the known region), ``vs euler`` / ``vs ddpm`` = how many times smaller than the
built-in's, ``var ratio`` = sample variance / conditional variance, ``NFE`` (model evaluations; ``+V``
vector-Jacobian products), wall time. Then the sampler overhead per step beyond the model on a
[1, 4, 32, 32] latent (a 256² SD image), with a free model (``x0 = 0.5·x``).

Run: ``python bench/bench_inpaint_exact.py [--samples 256] [--steps 50] [--methods ...] [--set repaint.jump_n_sample=10]``
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import alignnoise_core.inpaint as ip  # noqa: E402
from alignnoise_core.inpaint.gaussian import GaussianLatentPrior, posterior_metrics  # noqa: E402

FNS = {"repaint": ip.sample_repaint, "repaint r10": ip.sample_repaint, "repaint adaptive": ip.sample_repaint,
       "ddnm": ip.sample_ddnm, "ddnm no travel": ip.sample_ddnm,
       "diffpir": ip.sample_diffpir, "pigdm": ip.sample_pigdm, "mcg": ip.sample_mcg}


def sd15_sigmas(steps: int) -> torch.Tensor:
    """ComfyUI's ``simple`` scheduler over SD1.5's scaled_linear table (β 0.00085 → 0.012, 1000 steps)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    table = ((1 - ac) / ac).sqrt()
    ss = len(table) / steps
    return torch.tensor([float(table[-(1 + int(i * ss))]) for i in range(steps)] + [0.0])


def flow_sigmas(steps: int, shift: float = 3.0) -> torch.Tensor:
    """ComfyUI's ``simple`` scheduler over ModelSamplingDiscreteFlow's table (t = i/1000, time shift)."""
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    table = shift * t / (1 + (shift - 1) * t)
    ss = len(table) / steps
    return torch.tensor([float(table[-(1 + int(i * ss))]) for i in range(steps)] + [0.0])


def masks(h: int, w: int) -> dict:
    hole = torch.zeros(h, w)
    hole[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
    border = torch.ones(h, w)
    border[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 0
    return {"hole": hole, "border": border}


def method_params(name: str, overrides: dict) -> dict:
    base = "repaint" if name.startswith("repaint") else "ddnm" if name.startswith("ddnm") else name
    p = dict(ip.DEFAULTS[base])
    if name == "repaint adaptive":
        p["schedule"] = "adaptive"
    if name == "repaint r10":  # the paper's j = r = 10, over the same 50-step SIGMAS (not a default)
        p["jump_n_sample"] = 10
    if name == "ddnm no travel":  # the reference config (time travel off), 50 NFE
        p.update(travel_length=1, travel_repeat=1)
    p.update(overrides.get(name, {}))
    return p


def run_all(args, overrides):
    prior = GaussianLatentPrior(lengthscales=args.lengthscales)
    truth = prior.sample(1, torch.Generator().manual_seed(args.seed))
    rows = []
    spaces = {"VE": (ip.VE, sd15_sigmas(args.steps)), "FLOW": (ip.FLOW, flow_sigmas(args.steps))}
    for mask_name, gen in masks(*prior.shape[1:]).items():
        mu_c, var_c = prior.conditional(truth[0], gen)
        known = torch.where(gen > 0.5, prior.mean.float(), truth)
        mask = gen.view(1, 1, *gen.shape)
        for space_name in args.spaces:
            space, sigmas = spaces[space_name]
            model = prior.model(space)
            noise = torch.randn((args.samples,) + prior.shape, generator=torch.Generator().manual_seed(args.seed + 1))
            s0 = float(sigmas[0])
            # ComfyUI's noise_scaling: EPS with max_denoise scales by √(1+σ²); CONST mixes (1−σ)·y + σ·n
            x = known * space.alpha(s0) + noise * (math.sqrt(1 + s0 * s0) if space is ip.VE else s0)
            exact = mu_c + var_c.sqrt() * torch.randn((args.samples,) + prior.shape,
                                                      generator=torch.Generator().manual_seed(args.seed + 2),
                                                      dtype=torch.float64)
            m = posterior_metrics(exact, mu_c, var_c, prior.mean, gen)
            rows.append((mask_name, space_name, "exact posterior", m, "-", 0.0))
            base_err = {}
            for name in ["builtin euler", "builtin ddpm"] + args.methods:
                stats = {}
                t0 = time.perf_counter()
                if name.startswith("builtin"):
                    out = ip.sample_builtin_inpaint(model, x, sigmas, known=known, mask=mask, space=space,
                                                    noise=noise, step=name.split()[1], stats=stats,
                                                    generator=torch.Generator().manual_seed(args.seed + 3))
                else:
                    out = FNS[name](model, x, sigmas, known=known, mask=mask, space=space, stats=stats,
                                    generator=torch.Generator().manual_seed(args.seed + 3),
                                    **method_params(name, overrides))
                dt = time.perf_counter() - t0
                m = posterior_metrics(out, mu_c, var_c, prior.mean, gen)
                if not torch.equal(out[(mask == 0).expand_as(out)], known.expand_as(out)[(mask == 0).expand_as(out)]):
                    raise AssertionError(f"{name}: the known region is not the known latent")
                if name.startswith("builtin"):
                    base_err[name] = m["mean_error"]
                nfe = f"{stats['nfe']}" + (f"+{stats['vjp']}V" if "vjp" in stats else "")
                rows.append((mask_name, space_name, name, m, nfe, dt))
                if name == "repaint adaptive":
                    m["note"] = f"{stats['resamplings']} resamplings"
                print(f"  {mask_name:6s} {space_name:4s} {name:16s} {m['mean_error']:.3f}", file=sys.stderr, flush=True)
            for row in rows:
                if row[0] == mask_name and row[1] == space_name and row[2] != "exact posterior":
                    row[3]["vs euler"] = base_err["builtin euler"] / row[3]["mean_error"]
                    row[3]["vs ddpm"] = base_err["builtin ddpm"] / row[3]["mean_error"]
    return rows


def overhead(args):
    """Per-step time of each sampler on [1, 4, 32, 32] with a free model, minus the model's own time."""
    x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    known = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    sig = sd15_sigmas(args.steps)
    calls = [0]

    def model(z, sigma, **kw):
        calls[0] += 1
        return z * 0.5

    out = []
    for name in ["builtin euler"] + args.methods:
        best = math.inf
        for _ in range(3):
            calls[0] = 0
            t0 = time.perf_counter()
            if name == "builtin euler":
                ip.sample_builtin_inpaint(model, x, sig, known=known, mask=mask, space=ip.VE)
            else:
                FNS[name](model, x, sig, known=known, mask=mask, space=ip.VE, **method_params(name, {}))
            best = min(best, (time.perf_counter() - t0) / calls[0])
        t0 = time.perf_counter()
        for _ in range(200):
            model(x, sig[0])
        model_ms = (time.perf_counter() - t0) / 200
        out.append((name, 1000 * (best - model_ms)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lengthscales", type=lambda s: tuple(float(v) for v in s.split(",")), default=(3.0, 4.0, 5.0, 3.0))
    ap.add_argument("--spaces", nargs="+", default=["VE", "FLOW"])
    ap.add_argument("--methods", nargs="+", default=list(FNS))
    ap.add_argument("--set", nargs="*", default=[], help="overrides, e.g. repaint.jump_n_sample=10")
    ap.add_argument("--no-overhead", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.set:
        key, value = item.split("=")
        meth, param = key.rsplit(".", 1)
        overrides.setdefault(meth.replace("_", " "), {})[param] = value if value.isalpha() else float(value) \
            if "." in value else int(value)
    rows = run_all(args, overrides)
    print(f"\n{args.samples} samples, {args.steps} steps, prior lengthscales {args.lengthscales}\n")
    print("| mask | space | method | mean err | vs euler | vs ddpm | var ratio | NFE | time s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for mask_name, space_name, name, m, nfe, dt in rows:
        vs = (f"{m['vs euler']:.2f}×", f"{m['vs ddpm']:.2f}×") if "vs euler" in m else ("", "")
        note = f" ({m['note']})" if "note" in m else ""
        print(f"| {mask_name} | {space_name} | {name}{note} | {m['mean_error']:.3f} | {vs[0]} | {vs[1]} | "
              f"{m['var_ratio']:.2f} | {nfe} | {dt:.2f} |")
    fails = []
    for mask_name, space_name, name, m, nfe, dt in rows:
        if name in ("exact posterior", "repaint adaptive", "repaint r10", "ddnm no travel") or name.startswith("builtin"):
            continue
        need = 2.0 if name in ("repaint", "ddnm") else 1.0
        if min(m["vs euler"], m["vs ddpm"]) < need:
            fails.append(f"{mask_name}/{space_name}/{name}: {min(m['vs euler'], m['vs ddpm']):.2f}× < {need}× better")
        if not 0.5 <= m["var_ratio"] <= 1.5:
            fails.append(f"{mask_name}/{space_name}/{name}: var ratio {m['var_ratio']:.2f} outside [0.5, 1.5]")
    print("\nTargets (each method beats both built-ins; RePaint and DDNM by >= 2x; var ratio in [0.5, 1.5]):")
    print("  all met" if not fails else "\n".join("  MISSED " + f for f in fails))
    if not args.no_overhead:
        print("\nSampler overhead beyond the model, [1,4,32,32] latent, ms per model evaluation:")
        for name, ms in overhead(args):
            print(f"  {name:16s} {ms:.3f}")


if __name__ == "__main__":
    main()
