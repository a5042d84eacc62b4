"""Benchmark FreeSizeOutpaint: peak memory vs canvas width, UNet evaluations, time per window.

Run (CPU, needs a ComfyUI checkout)::

    COMFYUI_PATH=/work/comfy/ComfyUI /work/comfy/venv/bin/python bench/bench_freesize.py [--window 128]

Model: a generated random-weight SD1.5-type checkpoint (tests/comfy_harness.make_checkpoint: 44M-param
UNet, TAESD VAE) loaded by ComfyUI's own checkpoint loader. Canvases ``window`` px high and 1x, 2x,
4x, 8x ``window`` wide, the source = the left half window, raster order, 50 % overlap.

Each canvas width runs in a fresh subprocess (so one run's freed memory cannot hide the next one's
peak): after loading and one warm-up pass, ``plain`` = VAE encode + ``comfy.sample.sample_custom``
(the sampling of SamplerCustomAdvanced) + decode on one window-size crop with its noise mask, then
the node's function on the whole canvas, interleaved for ``--rounds`` rounds (minima). Times are CPU
seconds of the process (one torch thread), which a busy shared machine disturbs far less than wall
time (also shown). Peak = VmHWM above the RSS before each run (VmHWM reset). time per pass ÷ plain
must be <= 1.05 (the hierarchical pass is smaller than a window, so "on" rows sit lower); the peak
must stay flat across widths.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[0] / "tests"))
sys.path.insert(0, str(HERE.parents[0]))
import _memory  # noqa: E402


def one(width_factor: int, window: int, steps: int, rounds: int, hierarchical: bool) -> dict:
    import comfy_harness as ch

    ch.init()
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import comfy.utils
    import folder_paths

    comfy.utils.set_progress_bar_enabled(False)
    torch.set_num_threads(1)
    from alignnoise_core.comfy_host import common as cb
    from alignnoise_core.comfy_host import freesize as host

    name = ch.make_checkpoint("sd15", name="bench_freesize_sd15.safetensors", with_clip=False)
    with torch.inference_mode():
        model, _, vae = comfy.sd.load_checkpoint_guess_config(
            folder_paths.get_full_path("checkpoints", name), output_vae=True, output_clip=False)[:3]
        pos, neg = ch.fake_conditioning(), ch.fake_conditioning(seed=1)
        height, width = window, window * width_factor
        image = ch.synthetic_image(1, height, width)
        mask = torch.ones(1, height, width)
        mask[:, :, : window // 2] = 0
        sampler = comfy.samplers.sampler_object("euler")
        sigmas = cb.calculate_sigmas(model, "normal", steps)

        def plain():
            crop, m = image[:, :, :window], mask[:, :, :window]
            latent = {"samples": vae.encode(crop), "noise_mask": m.reshape(1, 1, height, window)}
            noise = cb.random_noise(latent, 0)
            out = comfy.sample.sample_custom(model, noise, 4.0, sampler, sigmas, pos, neg, latent["samples"],
                                             noise_mask=latent["noise_mask"], disable_pbar=True, seed=0)
            return vae.decode(out)

        def node():
            return host.free_size_outpaint(model, pos, neg, vae, image, mask, sampler, sigmas, 0, 4.0,
                                           window=window, overlap=0.5, order="raster", hierarchical=hierarchical)

        plain()  # warm-up: model load, allocator
        best = {"plain": [float("inf")] * 2, "node": [float("inf")] * 2}  # [wall, CPU] minima
        peaks = {"plain": 0, "node": 0}
        r = None
        for _ in range(rounds):  # interleaved, so both see the same machine load
            for key, fn in (("plain", plain), ("node", node)):
                base = _memory.status_bytes("VmRSS")
                _memory.reset_peak()
                t, c = time.perf_counter(), time.process_time()
                out = fn()
                wall, cpu = time.perf_counter() - t, time.process_time() - c
                peaks[key] = max(peaks[key], _memory.status_bytes("VmHWM") - base)
                best[key] = [min(best[key][0], wall), min(best[key][1], cpu)]
                if key == "node":
                    r = out
    return {"width": width, "height": height, "windows": len(r.plan), "unet_calls": r.unet_calls,
            "expected_calls": (len(r.plan) + int(r.hierarchical)) * steps, "wall_plain": best["plain"][0],
            "wall_node": best["node"][0], "cpu_plain": best["plain"][1], "cpu_node": best["node"][1],
            "peak_plain": peaks["plain"], "peak_node": peaks["node"], "hierarchical": r.hierarchical}


def overhead(window: int, factor: int, rounds: int = 5) -> tuple[float, int]:
    """CPU seconds per window of everything the node does besides the sampling pass (crop, composite,
    blend, layout preview), host-free: ``outpaint_windows`` with a runner that returns its crop."""
    from alignnoise_core import freesize as fs

    torch.set_num_threads(1)
    height, width = window, window * factor
    image = torch.rand(height, width, 3)
    mask = torch.ones(height, width)
    mask[:, : window // 2] = 0
    plan = fs.plan_windows(mask, window, 0.5, "raster")
    feather = (window - fs.stride_of(window, 0.5)) // 4
    best = float("inf")
    for _ in range(rounds):
        c = time.process_time()
        fs.outpaint_windows(image, mask, plan, lambda w, v, r, g: v.clone(), feather=min(32, feather))
        fs.draw_layout(plan, mask, image)
        best = min(best, time.process_time() - c)
    return best / len(plan), len(plan)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--hierarchical", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("Set COMFYUI_PATH to a ComfyUI checkout.")
    if args.one:
        print(json.dumps(one(args.one, args.window, args.steps, args.rounds, args.hierarchical)))
        return
    rows = []
    for factor in args.factors:
        for hier in ([False, True] if factor > 1 else [False]):
            cmd = [sys.executable, __file__, "--one", str(factor), "--window", str(args.window), "--steps",
                   str(args.steps), "--rounds", str(args.rounds)] + (["--hierarchical"] if hier else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {factor}x hierarchical={hier}: done", file=sys.stderr, flush=True)
    print(f"# FreeSizeOutpaint (CPU, torch {torch.__version__}, 1 thread; window {args.window} px, {args.steps} "
          f"euler steps, 44M-param random SD1.5 checkpoint + TAESD, min of {args.rounds})\n")
    print("| canvas | hierarchical | windows | UNet evals (counted) | passes x steps | CPU s / pass | plain pass CPU s | "
          "**ratio (CPU)** | ratio (wall) | peak node (MiB) | peak plain (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        passes = r["windows"] + int(r["hierarchical"])
        cpu, wall = r["cpu_node"] / passes, r["wall_node"] / passes
        print(f"| {r['width']}x{r['height']} | {'on' if r['hierarchical'] else 'off'} | {r['windows']} | "
              f"{r['unet_calls']} | {r['expected_calls']} | {cpu:.3f} | {r['cpu_plain']:.3f} | "
              f"**{cpu / r['cpu_plain']:.3f}** | {wall / r['wall_plain']:.3f} | {r['peak_node'] / 2**20:.0f} | "
              f"{r['peak_plain'] / 2**20:.0f} |")
    per, n = overhead(args.window, max(args.factors))
    print(f"\nNode work outside the sampling passes (host-free, {max(args.factors)}x canvas, {n} windows): "
          f"{per * 1000:.2f} ms CPU per window.")


if __name__ == "__main__":
    main()
