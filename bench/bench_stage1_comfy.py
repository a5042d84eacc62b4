"""Benchmark AlignNoise stage 1 through the ComfyUI path (the node's own code), side by side in one run.

Run (CPU, needs a ComfyUI checkout)::

    COMFYUI_PATH=/work/comfyui /work/cvenv/bin/python bench/bench_stage1_comfy.py [--sizes 256] [--width 320]

Model: an SD1.5-layout 9-channel inpainting UNet built from ComfyUI's own classes under
``inference_mode`` (as ``CheckpointLoaderSimple`` loads it inside the executor); ``--width 320`` is
the SD1.5 architecture itself (860M parameters). cfg 1, the 9-channel concat conditioning.

Rows, per image size (times are minima over ``--rounds``, measured round-robin in one process):

* plain frozen forward+backward: a custom sampler on a ``differentiable_clone`` (the same per-forward
  weight copies stage 1 needs for inference-mode weights) runs the full UNet with grad on the input
  and backpropagates ``mean(out^2)``; no weight gradients;
* stage 1 iteration: ``attention_balance`` with ``1 + k`` iterations minus the same with 1, divided
  by k (so loading, cond processing and the final evaluation cancel out): target <= 0.6;
* the same with gradient checkpointing.

"autograd saved" is what autograd keeps for the backward pass outside checkpointed regions during one
call (a deterministic proxy of activation memory): stage 1 needs less than the plain pass because
the forward stops after the last 1/32-level block.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import comfy_harness as ch  # noqa: E402
from autograd_memory import saved_bytes  # noqa: E402
from bench_stage2 import build_model, inpaint_inputs  # noqa: E402


def plain_forward_backward(model, pos, neg, latent, sigmas, reps: int) -> list[float]:
    """Times of ``reps`` frozen full forward+backward passes to the input, inside one sampler run
    (the pack's gradient session: the same per-forward weight copies as stage 1)."""
    from alignnoise_core.comfy_host import common

    times: list[float] = []

    def fn(ctx):
        ms = ctx.base_model.model_sampling
        with common.gradient_session(ctx.base_model):
            sigma = ctx.sigmas[:1].detach().clone()
            lat = ctx.latent_image.detach().clone()
            for _ in range(reps):
                t = time.perf_counter()
                z = ctx.noise.detach().clone().requires_grad_(True)
                x = ms.noise_scaling(sigma, z, lat, True)
                (out,) = ctx.calc_cond_batch(["positive"], x, sigma)
                out.pow(2).mean().backward()
                times.append(time.perf_counter() - t)
        return ctx.latent_image

    m = model.clone()
    try:
        noise = common.random_noise(latent, 0)
        common.run_sampler(m, pos, neg, 1.0, latent["samples"], sigmas, fn, noise=noise)
    finally:
        common.release_model(m)
    return times


def stage1(model, pos, neg, latent, mask, sigmas, iterations: int, checkpointing: bool) -> float:
    from alignnoise_core.comfy_host import stage1 as stage1_host

    t = time.perf_counter()
    stage1_host.attention_balance(model, pos, neg, latent, sigmas, 1, mask=mask, iterations=iterations,
                                  loss_threshold=0.0, gradient_checkpointing=checkpointing)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256], help="image sides in pixels")
    ap.add_argument("--width", type=int, default=320, help="UNet base channels (320 = SD1.5)")
    ap.add_argument("--extra", type=int, default=2, help="k: extra stage-1 iterations timed per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    ch.init_for_bench(args.threads)
    from alignnoise_core.comfy_host import common

    model, n_params = build_model(args.width)
    print(f"# AlignNoise stage 1 through ComfyUI (CPU, torch {torch.__version__}, {torch.get_num_threads()} threads)\n")
    print(f"SD1.5-layout 9-channel UNet, base width {args.width} ({n_params / 1e6:.0f}M params), built under "
          f"inference_mode; cfg 1; min of {args.rounds} rounds; stage-1 iteration = (1+{args.extra} iterations "
          f"- 1 iteration) / {args.extra}.\n")
    print("| image | variant | time / iter (s) | time ÷ plain | autograd saved (MiB) | saved ÷ plain |")
    print("|---|---|---:|---:|---:|---:|")
    for size in args.sizes:
        pos, neg, latent, mask = inpaint_inputs(size, size // 4)
        with torch.inference_mode():
            sig = common.calculate_sigmas(model, "normal", 50)
            best = {"plain": float("inf"), "stage1": float("inf"), "stage1_ckpt": float("inf")}
            plain_forward_backward(model, pos, neg, latent, sig, 1)  # warm-up
            stage1(model, pos, neg, latent, mask, sig, 1, False)
            for r in range(args.rounds):
                best["plain"] = min(best["plain"], min(plain_forward_backward(model, pos, neg, latent, sig, 2)))
                for key, gc in (("stage1", False), ("stage1_ckpt", True)):
                    one = stage1(model, pos, neg, latent, mask, sig, 1, gc)
                    more = stage1(model, pos, neg, latent, mask, sig, 1 + args.extra, gc)
                    best[key] = min(best[key], (more - one) / args.extra)
                print(f"  {size}px round {r + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in best.items()),
                      file=sys.stderr, flush=True)
            saved = {"plain": saved_bytes(lambda: plain_forward_backward(model, pos, neg, latent, sig, 1))[0]}
            for key, gc in (("stage1", False), ("stage1_ckpt", True)):
                one = saved_bytes(lambda: stage1(model, pos, neg, latent, mask, sig, 1, gc))[0]
                saved[key] = saved_bytes(lambda: stage1(model, pos, neg, latent, mask, sig, 2, gc))[0] - one
        names = {"plain": "plain frozen forward+backward", "stage1": "stage 1 iteration (AttentionBalanceNoiseOptimize)",
                 "stage1_ckpt": "stage 1 iteration, gradient checkpointing"}
        for k, name in names.items():
            print(f"| {size}² | {name} | {best[k]:.3f} | {best[k] / best['plain']:.2f} | {saved[k] / 2**20:.0f} | "
                  f"{saved[k] / saved['plain']:.2f} |")


if __name__ == "__main__":
    main()
