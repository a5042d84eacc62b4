"""Standalone AlignNoise (diffusers) vs plain diffusers inpainting, side by side, on CPU.

For a tiny and a mid-size random-weight ``StableDiffusionInpaintPipeline`` (no download), times:

* ``diffusers``: ``StableDiffusionInpaintPipeline.__call__`` (one pass, the baseline);
* ``plain``: :func:`alignnoise_core.pipeline.inpaint` with both stages off (same work as diffusers);
* ``stage 1``, ``stage 2``, ``AlignNoise``: attention balance only, frequency refine only, both;

at the same number of steps and prints a markdown table of seconds and ratios to the baseline.
Stage 1 runs its full iteration budget (``--balance-threshold 0``: never converges early), the
worst case; with a real model it often stops earlier.

    python bench/bench_cli.py                 # tiny (128 px) and mid (256 px), 20 steps
    python bench/bench_cli.py --steps 50 --presets mid --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
from PIL import Image

from alignnoise_core import pipeline
from alignnoise_core.tiny_pipeline import build_tiny_inpaint_pipeline

SIZES = {"tiny": (64, 32), "mid": (128, 64)}  # source px, pad px per side


def _cpu_seconds(fn):
    """(process CPU seconds, wall seconds, result). CPU time is what we compare: the machine is shared, and
    with one torch thread it measures the work itself, not how long other processes held the cores."""
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c, time.perf_counter() - w, out


def bench(preset: str, steps: int, repeats: int, iterations: int, threshold: float):
    pipe = build_tiny_inpaint_pipeline(preset)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False)
    src, pad = SIZES[preset]
    size = src + 2 * pad
    rng = np.random.default_rng(0)
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[pad:pad + src, pad:pad + src] = (rng.random((src, src, 3)) * 255).astype(np.uint8)
    mask = np.full((size, size), 255, np.uint8)
    mask[pad:pad + src, pad:pad + src] = 0
    img_t = torch.from_numpy(canvas).float() / 255
    mask_t = torch.from_numpy(mask).float() / 255
    z = pipeline.initial_noise((1, 4, size // 8, size // 8), 0)

    def diffusers_call():
        return pipe(" ", image=Image.fromarray(canvas), mask_image=Image.fromarray(mask), num_inference_steps=steps,
                    guidance_scale=0.0, latents=z, generator=torch.Generator().manual_seed(0), output_type="np")

    base = pipeline.AlignNoiseSettings(steps=steps, seed=0, balance_iterations=iterations,
                                       balance_threshold=threshold, paste_back=False)
    variants = {
        "plain": dataclasses.replace(base, attention_balance=False, frequency_refine=False),
        "stage 1": dataclasses.replace(base, frequency_refine=False),
        "stage 2": dataclasses.replace(base, attention_balance=False),
        "AlignNoise": base,
    }
    runs = {"diffusers pipe()": diffusers_call}
    for name, st in variants.items():
        runs[name] = lambda st=st: pipeline.inpaint(pipe, img_t, mask_t, st, progress=False)
    diffusers_call()  # warm-up (oneDNN kernels, allocator)
    best = {name: (float("inf"), float("inf"), None) for name in runs}
    for _ in range(repeats):  # interleaved, so load changes on the shared machine hit every variant alike
        for name, fn in runs.items():
            c, w, out = _cpu_seconds(fn)
            if c < best[name][0]:
                best[name] = (c, min(w, best[name][1]), out)
    ref = best["diffusers pipe()"][0]
    rows = []
    for name, (c, w, out) in best.items():
        cost = f"{out.unet_calls} fwd + {out.backward_calls} bwd" if name in variants else f"{steps + 1} fwd"
        rows.append((preset, size, steps, name, c, w, c / ref, cost))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "mid"], choices=["tiny", "mid"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--balance-iterations", type=int, default=10)
    ap.add_argument("--balance-threshold", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for preset in args.presets:
        rows += bench(preset, args.steps, args.repeats, args.balance_iterations, args.balance_threshold)
    print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s), best of {args.repeats} "
          f"(interleaved); stage 1: {args.balance_iterations} iterations (threshold {args.balance_threshold}); "
          "ratios of process CPU time\n")
    print("| pipeline | canvas px | steps | run | CPU s | wall s | ÷ diffusers | UNet work |")
    print("|---|---|---|---|---|---|---|---|")
    for preset, size, steps, name, c, w, ratio, cost in rows:
        print(f"| {preset} | {size} | {steps} | {name} | {c:.2f} | {w:.2f} | {ratio:.2f}× | {cost} |")


if __name__ == "__main__":
    main()
