"""Benchmark AlignNoise stage 2 and the whole two-pass pipeline inside ComfyUI, side by side.

Run (CPU, needs a ComfyUI checkout)::

    COMFYUI_PATH=/work/comfyui /work/cvenv/bin/python bench/bench_stage2.py [--steps 50] [--size 128]

Model: a random SD1.5-architecture 9-channel inpainting UNet (full SD1.5 layout, narrower:
``--width`` base channels, 128 by default = 142M parameters; 320 = SD1.5 itself), built in-process
under ``inference_mode`` as a checkpoint loader would; 256 px by default (the paper runs 512 px; the
share of stage 1 shrinks as the image grows, see the README); cfg 1 (the paper's guidance 0), euler,
``normal``.
All nodes are called exactly as the executor calls them (their ``execute`` under inference_mode).

Rows (ratios to a plain single pass of the same steps, measured in this run):

* second-pass step time: sampling driven by FrequencyNoiseRefine's NOISE (after stage 1 and the
  refiner ran on the same MODEL) ÷ a plain pass: target ≤ 1.02 (nothing patched remains);
* whole two-pass AlignNoise: stage 1 (AttentionBalanceNoiseOptimize, all iterations forced by a
  zero loss threshold) + pass 1 + refine + pass 2, ÷ plain: target ≤ 2.4;
* the same with coarse-to-fine (first pass with half the steps, the reference's ``use_fast_sampling``):
  target ≤ 1.9.

If AttentionBalanceNoiseOptimize is not available the stage-1 rows say so and the two-pass rows
are measured with RandomNoise (stage 2 only).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import comfy_harness as ch  # noqa: E402


def build_model(width: int, in_channels: int = 9, seed: int = 0):
    """SD1.5 UNet layout (4 levels, 2 res blocks, attention at the first three) with ``width`` channels.

    ComfyUI pops ``transformer_depth_output`` from the end (output block 0 takes the last entry), so
    SD1.5's list is [1]*9 + [0]*3, as ``model_detection`` reads it from an SD1.5 checkpoint."""
    mp = ch.tiny_model(in_channels, seed, num_heads=8, model_channels=width, channel_mult=[1, 2, 4, 4],
                       num_res_blocks=[2, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                       transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    n_params = sum(p.numel() for p in mp.model.diffusion_model.parameters())
    return mp, n_params


def inpaint_inputs(size: int, border: int):
    """Conditioning with the 9-channel concat (as InpaintModelConditioning, noise_mask off), the
    original-pixel latent and the outpaint MASK (1 = outpainted)."""
    import node_helpers

    lat_hw = size // 8
    g = torch.Generator().manual_seed(0)
    latent = {"samples": torch.randn(1, 4, lat_hw, lat_hw, generator=g) * 4.0}
    mask = torch.ones(1, size, size)
    mask[:, border:size - border, border:size - border] = 0
    concat = latent["samples"] * (1 - torch.nn.functional.interpolate(mask[:, None], size=(lat_hw, lat_hw)))
    cond = ch.fake_conditioning()
    values = {"concat_latent_image": concat, "concat_mask": mask[:, None]}
    pos = node_helpers.conditioning_set_values(cond, values)
    neg = node_helpers.conditioning_set_values(ch.fake_conditioning(seed=1), values)
    return pos, neg, latent, mask


def node(node_id):
    return ch.node_class(node_id)


def result(out):
    return out.result if hasattr(out, "result") else out


def sample(model, pos, neg, noise, latent, sigmas):
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(pos, neg)
    guider.set_cfg(1.0)
    return result(node("SamplerCustomAdvanced").execute(
        noise, guider, comfy.samplers.sampler_object("euler"), sigmas, latent))[0]


def stage1_available() -> bool:
    try:
        node("AttentionBalanceNoiseOptimize")
        return True
    except KeyError:
        return False


def run_stage1(model, pos, neg, latent, mask, sigmas, seed, iterations):
    """Call AttentionBalanceNoiseOptimize with its schema's defaults, all iterations forced."""
    cls = node("AttentionBalanceNoiseOptimize")
    schema = cls.GET_SCHEMA()
    provided = {
        "model": model, "positive": pos, "negative": neg, "latent_image": latent, "latent": latent, "mask": mask,
        "noise_seed": seed, "seed": seed, "sigmas": sigmas, "steps": len(sigmas) - 1, "scheduler": "normal",
        "cfg": 1.0, "iterations": iterations, "max_iterations": iterations, "loss_threshold": 0.0,
        "threshold": 0.0,
    }
    kwargs = {}
    for inp in schema.inputs:
        if inp.id in provided:
            kwargs[inp.id] = provided[inp.id]
        elif getattr(inp, "default", None) is not None:
            kwargs[inp.id] = inp.default
        elif not inp.optional:
            raise RuntimeError(f"bench does not know how to fill AttentionBalanceNoiseOptimize.{inp.id}")
    return result(cls.execute(**kwargs))[0]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def progress(msg):
    print(f"[bench_stage2 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=10, help="stage-1 iterations (all run)")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size/8)")
    ap.add_argument("--width", type=int, default=128, help="UNet base channels (SD1.5: 320)")
    ap.add_argument("--step-steps", type=int, default=10, help="steps per run for the step-time row")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of every measurement (min taken)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared CPU, OpenMP oversubscription makes timings meaningless)")
    args = ap.parse_args()

    if ch.comfyui_path() is None:
        sys.exit("Set COMFYUI_PATH to a ComfyUI checkout.")
    ch.init()
    import comfy.utils

    comfy.utils.set_progress_bar_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    import comfy.model_management as mm  # noqa: F401  (after args.cpu)
    from alignnoise_core import frequency
    from alignnoise_core.comfy_host import common

    model, n_params = build_model(args.width)
    pos, neg, latent, mask = inpaint_inputs(args.size, args.size // 4)
    have_stage1 = stage1_available()
    refine = node("FrequencyNoiseRefine")
    random_noise = node("RandomNoise")

    with torch.inference_mode():
        sig_full = common.calculate_sigmas(model, "normal", args.steps)
        sig_half = common.calculate_sigmas(model, "normal", frequency.fast_sampling_steps(args.steps, 2)[0])
        sig_short = common.calculate_sigmas(model, "normal", args.step_steps)
        noise0 = result(random_noise.execute(1))[0]
        # Warm-up of every component (the first large allocations and runs are markedly slower).
        if have_stage1:
            run_stage1(model, pos, neg, latent, mask, sig_full, 1, 2)
        sample(model, pos, neg, noise0, latent, sig_short)

        # Whole pipelines (stage 1 first, so the step-time row afterwards also shows nothing stays patched).
        def two_pass(first_sigmas):
            t0 = time.perf_counter()
            if have_stage1:
                n1 = run_stage1(model, pos, neg, latent, mask, sig_full, 1, args.iterations)
            else:
                n1 = noise0
            t1 = time.perf_counter()
            out1 = sample(model, pos, neg, n1, latent, first_sigmas)
            t2 = time.perf_counter()
            n2 = result(refine.execute(model, out1, n1, "butterworth", 0.25, 4, 0.25, 2, mask=mask))[0]
            sample(model, pos, neg, n2, out1, sig_full)
            t3 = time.perf_counter()
            return t3 - t0, t1 - t0, n2, {"pass1": t2 - t1, "refine+pass2": t3 - t2}

        def step_time(noise):
            return timed(lambda: sample(model, pos, neg, noise, latent, sig_short))[0] / args.step_steps

        # Plain step time before anything of ours ran on this MODEL.
        before = [step_time(noise0) for _ in range(args.repeats)]
        progress(f"plain step before stage 1: {[round(t, 4) for t in before]}")
        # Whole pipelines, round robin so machine-load drift hits all of them alike; min of repeats.
        plain, two, c2f, s1, p1, p1h, p2 = [], [], [], [], [], [], []
        n2 = None
        for _ in range(args.repeats):
            plain.append(timed(lambda: sample(model, pos, neg, noise0, latent, sig_full))[0])
            progress(f"plain pass {plain[-1]:.2f}s")
            t, ts1, n2, parts = two_pass(sig_full)
            two.append(t)
            s1.append(ts1)
            p1.append(parts["pass1"])
            p2.append(parts["refine+pass2"])
            progress(f"two-pass {t:.2f}s (stage 1 {ts1:.2f}s)")
            t, ts1, _, parts = two_pass(sig_half)
            c2f.append(t)
            s1.append(ts1)
            p1h.append(parts["pass1"])
            p2.append(parts["refine+pass2"])
            progress(f"coarse-to-fine {t:.2f}s (stage 1 {ts1:.2f}s)")
        # Step time after stage 1 + refine ran: plain vs driven by the refined NOISE, interleaved.
        after, refined = [], []
        for _ in range(args.repeats):
            after.append(step_time(noise0))
            refined.append(step_time(n2))
        t_refine, _ = timed(lambda: refine.execute(model, latent, noise0, "butterworth", 0.25, 4, 0.25, 2, mask=mask))

    step_plain, step_after, step_refined = min(before), min(after), min(refined)
    # Component sums (min of each part over all runs): less sensitive to machine-load drift than totals.
    comp_two = min(s1) + min(p1) + min(p2)
    comp_c2f = min(s1) + min(p1h) + min(p2)
    t_plain, t_two, t_c2f, t_s1 = min(plain), min(two), min(c2f), min(s1)
    s1_note = "" if have_stage1 else " (stage 1 NOT available: RandomNoise used)"
    half = frequency.fast_sampling_steps(args.steps, 2)[0]
    print(f"# AlignNoise stage 2 benchmark (ComfyUI, CPU, {torch.get_num_threads()} threads)\n")
    print(f"SD1.5-layout 9-channel UNet, base width {args.width} ({n_params / 1e6:.0f}M params), "
          f"{args.size}x{args.size} px (latent {args.size // 8}x{args.size // 8}), euler/normal, cfg 1, "
          f"{args.steps} steps, stage-1 iterations {args.iterations}{s1_note}; min of {args.repeats} runs.\n")
    print("| measurement | time (s) | ratio | target |")
    print("|---|---:|---:|---:|")
    print(f"| plain sampling step (before stage 1 ran) | {step_plain:.4f} | 1.000 | |")
    print(f"| plain sampling step after stage 1 + refine ran on the same MODEL | {step_after:.4f} | "
          f"{step_after / step_plain:.3f} | (leak check) |")
    print(f"| second-pass step (FrequencyNoiseRefine NOISE) vs plain step interleaved with it | {step_refined:.4f} | "
          f"{step_refined / step_after:.3f} | <= 1.02 |")
    print(f"| FrequencyNoiseRefine node itself | {t_refine:.4f} | {t_refine / step_plain:.3f} steps | |")
    print(f"| plain single pass ({args.steps} steps) | {t_plain:.2f} | 1.000 | |")
    print(f"| stage 1 ({args.iterations} iterations, all run) | {t_s1:.2f} | {t_s1 / t_plain:.3f} | |")
    print(f"| two-pass AlignNoise (stage 1 + {args.steps} + {args.steps} steps) | {t_two:.2f} | "
          f"{t_two / t_plain:.3f} | <= 2.4 |")
    print(f"| two-pass, coarse-to-fine (stage 1 + {half} + {args.steps} steps) | {t_c2f:.2f} | "
          f"{t_c2f / t_plain:.3f} | <= 1.9 |")
    print(f"| two-pass, sum of component minima (stage 1 + pass 1 + refine + pass 2) | {comp_two:.2f} | "
          f"{comp_two / t_plain:.3f} | <= 2.4 |")
    print(f"| coarse-to-fine, sum of component minima | {comp_c2f:.2f} | {comp_c2f / t_plain:.3f} | <= 1.9 |")
    r = lambda xs: [round(x, 3) for x in xs]  # noqa: E731
    print(f"\nraw: step before {r(before)}, after {r(after)}, refined {r(refined)}; plain {r(plain)}, two-pass {r(two)}, "
          f"coarse-to-fine {r(c2f)}, stage 1 {r(s1)}, pass 1 {r(p1)}, half pass 1 {r(p1h)}, refine+pass 2 {r(p2)}")


if __name__ == "__main__":
    main()
