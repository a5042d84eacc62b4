"""Benchmark the inpainting SAMPLERs through ComfyUI against its built-in noise_mask inpainting, in one run.

Run (CPU, needs a ComfyUI checkout)::

    COMFYUI_PATH=/work/comfy/ComfyUI /work/comfy/venv/bin/python bench/bench_inpaint_samplers_comfy.py \
        [--samples 256] [--steps 50] [--cost-width 320]

Table 1, quality against the exact posterior: the stationary Gaussian latent model
(``alignnoise_core.inpaint.gaussian``) wrapped as a real ComfyUI MODEL (tests/comfy_gaussian.py: a tiny
SD1.5 ModelPatcher whose UNet call returns the closed-form MMSE x0; flow = the same patched by core's
ModelSamplingSD3). Every row runs SamplerCustomAdvanced + CFGGuider (cfg 1) on ``--samples`` copies of
one known latent (its generated cells set to the prior mean, so no sampler's start sees the truth there): ComfyUI's built-in inpainting (KSamplerSelect euler / ddpm, i.e. KSamplerX0Inpaint's
fixed-noise replacement) and our five nodes at their node defaults, same SIGMAS (``normal`` for eps,
``simple`` for flow). Columns: conditional-mean error of the generated cells (‖mean − μ_cond‖ /
‖μ_prior − μ_cond‖: 0 = exact, 1 = as if the known region were ignored; the Monte-Carlo floor of an exact
sampler is printed per mask), variance ratio (sample / exact conditional variance), model evaluations,
wall time, and the largest known-region deviation from the latent.

Table 2, cost on an SD1.5-architecture UNet (ComfyUI classes, random weights, 256², 4-channel, cfg 1,
``--threads`` threads):

* sampler overhead per model evaluation: each sampler on a zero-cost model (the UNet call replaced by
  ``0·x`` through the same wrapper hook) minus built-in euler on it, divided by its model evaluations,
  as a percentage of one real UNet evaluation (target ≤ 5 %);
* ΠGDM / MCG step time ÷ a plain step ((T(k+1 steps) − T(1 step)) / k, euler's for the plain step;
  target ≤ 3).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import comfy_harness as ch  # noqa: E402

NODES = {"RePaintSampler": "repaint", "DDNMSampler": "ddnm", "DiffPIRSampler": "diffpir", "PiGDMSampler": "pigdm",
         "MCGSampler": "mcg"}


def node_sampler(node_id: str):
    from alignnoise_core.inpaint import DEFAULTS

    params = inspect.signature(ch.node_class(node_id).execute).parameters
    return ch.node_class(node_id).execute(**{k: v for k, v in DEFAULTS[NODES[node_id]].items() if k in params}).result[0]


def samplers() -> dict:
    import comfy.samplers

    rows = {f"built-in {n} (KSamplerSelect)": comfy.samplers.sampler_object(n) for n in ("euler", "ddpm")}
    rows.update({node_id: node_sampler(node_id) for node_id in NODES})
    return rows


def quality_table(n: int, steps: int) -> None:
    import comfy_gaussian as cg

    from alignnoise_core.comfy_host import common as cb
    from alignnoise_core.inpaint.gaussian import GaussianLatentPrior, posterior_metrics

    prior = GaussianLatentPrior()
    y = prior.sample(1, torch.Generator().manual_seed(0))
    print(f"\n## Exact Gaussian posterior through ComfyUI ({n} samples, {steps} steps, latent 4×16×16)\n")
    print("| space | mask | sampler | mean error | variance ratio | model evals | time (s) | known max |Δ| |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for flow in (False, True):
        model, _ = cg.gaussian_model(prior, flow=flow)
        sigmas = cb.calculate_sigmas(model, "simple" if flow else "normal", steps)
        for mask_name, mask in cg.masks(16, 16).items():
            cm, cv = prior.conditional(y[0], mask)
            floor = None
            for name, sampler in samplers().items():
                model.gaussian_calls["n"] = 0
                t = time.perf_counter()
                s = cg.run(model, sampler, sigmas, y, mask, n, seed=1, fill=prior.mean)
                dt = time.perf_counter() - t
                met = posterior_metrics(s, cm, cv, prior.mean, mask)
                floor = met["mc_floor"]
                known = float((s - y)[(mask == 0).expand_as(s)].abs().max())
                print(f"| {'flow' if flow else 'eps'} | {mask_name} | {name} | {met['mean_error']:.3f} | "
                      f"{met['var_ratio']:.2f} | {model.gaussian_calls['n']} | {dt:.1f} | {known:.1e} |", flush=True)
            print(f"| {'flow' if flow else 'eps'} | {mask_name} | (Monte-Carlo floor of an exact sampler) | "
                  f"{floor:.3f} | 1.00 | | | |")


def _timed(model, sampler, latent, sigmas) -> float:
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(model)
    cond = ch.fake_conditioning()
    guider.set_conds(cond, cond)
    guider.set_cfg(1.0)
    noise = ch.node_class("RandomNoise").execute(0).result[0]
    t = time.perf_counter()
    ch.node_class("SamplerCustomAdvanced").execute(noise, guider, sampler, sigmas, latent)
    return time.perf_counter() - t


def cost_table(width: int, rounds: int, overhead_steps: int, grad_steps: int) -> None:
    import comfy.samplers
    from bench_stage2 import build_model

    from alignnoise_core.comfy_host import common as cb

    model, n_params = build_model(width, in_channels=4)
    zero = model.clone()
    zero.set_model_unet_function_wrapper(lambda apply_model, args: args["input"] * 0.0)
    mask = torch.zeros(1, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    latent = {"samples": torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0)), "noise_mask": mask}
    euler = comfy.samplers.sampler_object("euler")
    rows = samplers()
    sig_over = cb.calculate_sigmas(model, "normal", overhead_steps)
    sig_k = cb.calculate_sigmas(model, "normal", grad_steps + 1)
    sig_1 = sig_k[[0, -1]]

    best: dict = {}

    def keep(key, value):
        best[key] = min(best.get(key, float("inf")), value)

    _timed(model, euler, latent, sig_1)  # warm-up
    for r in range(rounds):
        keep("unet", (_timed(model, euler, latent, sig_k) - _timed(model, euler, latent, sig_1)) / grad_steps)
        base = _timed(zero, euler, latent, sig_over)
        for name, s in rows.items():
            if name.startswith("built-in"):
                continue
            t = _timed(zero, s, latent, sig_over)
            keep(("over", name), (t - base * s.last_stats.model_evaluations / overhead_steps) / s.last_stats.model_evaluations)
        for name in ("PiGDMSampler", "MCGSampler"):
            s = rows[name]
            keep(("grad", name), (_timed(model, s, latent, sig_k) - _timed(model, s, latent, sig_1)) / grad_steps)
        print(f"  round {r + 1}: unet {best['unet']:.2f}s", file=sys.stderr, flush=True)
    print(f"\n## Cost on an SD1.5-architecture UNet ({n_params / 1e6:.0f}M params, 256², 4-channel, cfg 1, "
          f"{torch.get_num_threads()} thread(s), min of {rounds} rounds)\n")
    print(f"One UNet evaluation (euler step): {best['unet']:.3f} s.\n")
    print("| sampler | overhead per model evaluation (ms) | ÷ UNet evaluation | step ÷ plain step |")
    print("|---|---:|---:|---:|")
    for name in rows:
        if name.startswith("built-in"):
            continue
        over = best[("over", name)]
        ratio = f"{best[('grad', name)] / best['unet']:.2f}" if ("grad", name) in best else ""
        print(f"| {name} | {over * 1e3:.1f} | {100 * over / best['unet']:.2f} % | {ratio} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cost-width", type=int, default=320, help="UNet base channels for the cost table (320 = SD1.5)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--overhead-steps", type=int, default=50)
    ap.add_argument("--grad-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    ch.init_for_bench(args.threads)
    print(f"# Inpainting samplers through ComfyUI (CPU, torch {torch.__version__}, {torch.get_num_threads()} threads)")
    with torch.inference_mode():
        if not args.skip_quality:
            quality_table(args.samples, args.steps)
        if not args.skip_cost:
            cost_table(args.cost_width, args.rounds, args.overhead_steps, args.grad_steps)


if __name__ == "__main__":
    main()
