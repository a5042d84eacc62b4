"""Benchmark AlignNoise stage 1 (AttentionBalanceNoiseOptimize core) against a plain frozen UNet
forward+backward and a reference-style iteration, side by side in one run, on CPU.

Model: a random-weight SD1.5-inpainting-architecture ``UNet2DConditionModel`` (860M parameters,
9 input channels) driven through ``alignnoise_core.diffusers_bridge`` (the same optimiser core the
ComfyUI node uses).

Rows:
- plain: frozen UNet, SDPA attention, full forward + backward of ``mean(out^2)`` w.r.t. the noise;
- stage1: one optimisation iteration of this pack (target-level explicit attention only, forward
  stopped after the last target-level block, no weight gradients, vectorised loss, Adam step);
- stage1 (no early stop): the same with the full forward;
- stage1 (gradient checkpointing): the same with the non-target layers recomputed in the backward;
- reference-style: explicit softmax processors on every attention layer, gradients for all UNet
  weights, full forward, loop loss (what ``WHUIR/AlignNoise`` ``fn_AAM`` does per iteration).

Times are measured round-robin in one process (min over rounds, robust to load from other
processes); peak memory (VmHWM minus RSS before the measured call) in one subprocess per variant.

Usage: ``python bench/bench_stage1.py [--sizes 256 512] [--rounds 3]``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _memory import reset_peak, status_bytes

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

T0 = 981


def _inputs(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = size // 8
    z = torch.randn(1, 4, h, h, generator=g)
    mask = torch.ones(1, 1, size, size)
    lo, hi = int(75 * size / 512), int(437 * size / 512)  # the reference's mask_1.png, scaled
    mask[..., lo:hi, lo:hi] = 0
    mask_lat = torch.nn.functional.interpolate(mask, size=(h, h), mode="nearest")
    concat = torch.cat([mask_lat, torch.randn(1, 4, h, h, generator=g)], 1)
    ehs = torch.randn(1, 77, 768, generator=g)
    return z, mask, concat, ehs


def _build():
    from alignnoise_core.tiny_pipeline import build_unet

    # SD-layout UNet from the shared builder (same config and weights as a hand-written one, seed 0)
    return build_unet("mid", in_channels=9, seed=0, sample_size=64, block_out_channels=(320, 640, 1280, 1280),
                      cross_attention_dim=768).eval().requires_grad_(False)


def _steps(unet, size):
    """One callable per variant, each doing one iteration; the UNet is restored after each call."""
    from test_balance import loop_loss

    from alignnoise_core.attention import explicit_attention, target_grid
    from alignnoise_core.balance import tokens_from_mask
    from alignnoise_core.diffusers_bridge import optimize_unet_noise

    z, mask, concat, ehs = _inputs(size)

    def plain():
        x = z.clone().requires_grad_(True)
        out = unet(torch.cat([x, concat], 1), T0, encoder_hidden_states=ehs).sample
        out.pow(2).mean().backward()

    def stage1(early_stop=True, checkpointing=False):
        optimize_unet_noise(unet, z, mask, T0, ehs, concat=concat, iterations=1, loss_threshold=-1.0,
                            early_stop=early_stop, gradient_checkpointing=checkpointing)

    grid = target_grid(z.shape[-2:])
    store = []

    class Explicit:  # AttendExciteAttnProcessor: explicit softmax everywhere, store at the 1/32 level
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
            ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            q, k, v = attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx)
            out, probs = explicit_attention(q, k, v, attn.heads, attn.scale)
            if encoder_hidden_states is None and probs.shape[-1] == grid[0] * grid[1]:
                store.append(probs[0])
            return attn.to_out[1](attn.to_out[0](out))

    tm = tokens_from_mask(mask, z.shape[-2:], grid)[0].view(*grid)

    def reference():
        originals = unet.attn_processors
        unet.set_attn_processor(Explicit())
        unet.requires_grad_(True)  # the reference never freezes the UNet
        try:
            store.clear()
            log_var = torch.zeros_like(z, requires_grad=True)
            mu = torch.zeros_like(z, requires_grad=True)
            opt = torch.optim.Adam([log_var, mu], lr=1e-2, eps=1e-3)
            zh = z * torch.exp(0.5 * log_var) + mu
            unet(torch.cat([zh, concat], 1), T0, encoder_hidden_states=ehs)
            S = torch.cat(store, 0).mean(0).view(*grid, -1)
            loss, _, _ = loop_loss(S, tm)
            opt.zero_grad()
            loss.backward()
            opt.step()
        finally:
            store.clear()
            unet.zero_grad(set_to_none=True)
            unet.requires_grad_(False)
            unet.set_attn_processor(originals)

    return {"plain": plain, "stage1": stage1, "stage1_full": lambda: stage1(False),
            "stage1_ckpt": lambda: stage1(checkpointing=True), "reference": reference}


def _worker(mode: str, size: int) -> dict:
    """Peak memory of one call of a variant in a fresh process, above the RSS after model creation
    (no warm-up: the allocator would keep the warm-up's memory and hide the peak)."""
    unet = _build()
    step = _steps(unet, size)[mode]
    base = status_bytes("VmRSS")
    reset_peak()
    step()
    return {"mode": mode, "size": size, "peak": status_bytes("VmHWM") - base}


def _timings(size: int, modes, rounds: int) -> dict:
    """Per-iteration time of every variant, interleaved round-robin in one process (min over rounds),
    so that load from other processes affects all variants alike."""
    unet = _build()
    steps = _steps(unet, size)
    for m in modes:
        steps[m]()  # warm-up
    best = {m: float("inf") for m in modes}
    for r in range(rounds):
        for m in modes:
            t = time.perf_counter()
            steps[m]()
            best[m] = min(best[m], time.perf_counter() - t)
        print(f"  {size}px round {r + 1}/{rounds}: " + ", ".join(f"{m} {best[m]:.2f}s" for m in modes),
              file=sys.stderr)
    return best


def _loss_timing(reps: int = 20) -> dict:
    from test_balance import loop_loss, mask1_tokens, random_attention

    from alignnoise_core.balance import balance_loss, tokens_from_mask

    tm = tokens_from_mask(mask1_tokens(), (64, 64), (16, 16))
    attn = random_attention(1, 256, 0)
    fns = {
        "vectorised": lambda a: balance_loss(a, tm, (16, 16)).loss.sum(),
        "loop": lambda a: loop_loss(a[0].view(16, 16, 256), tm[0].view(16, 16))[0],
    }
    res = {name: float("inf") for name in fns}
    for _ in range(reps):  # interleaved, min over repetitions: robust to load from other processes
        for name, fn in fns.items():
            a = attn.clone().requires_grad_(True)
            t = time.perf_counter()
            fn(a).backward()
            res[name] = min(res[name], time.perf_counter() - t)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256])
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (min is reported)")
    ap.add_argument("--modes", nargs="+", default=["plain", "stage1", "stage1_full", "stage1_ckpt", "reference"])
    ap.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    ap.add_argument("--no-timing", action="store_true", help="skip the timing rounds")
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if args.worker:
        print(json.dumps(_worker(args.worker[0], int(args.worker[1]))))
        return

    print(f"# AlignNoise stage 1 benchmark (CPU, torch {torch.__version__}, {torch.get_num_threads()} threads)\n")
    lt = _loss_timing()
    rows = []
    for size in args.sizes:
        times = {} if args.no_timing else _timings(size, args.modes, args.rounds)
        peaks = {}
        if not args.no_memory:
            for mode in args.modes:
                out = subprocess.run([sys.executable, __file__, "--worker", mode, str(size)],
                                     capture_output=True, text=True, check=True)
                peaks[mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
                print(f"  {size}px {mode}: peak +{peaks[mode] / 2**20:.0f} MiB", file=sys.stderr)
        rows.append((size, times, peaks))

    names = {"plain": "plain frozen forward+backward", "stage1": "stage 1 iteration (this pack)",
             "stage1_full": "stage 1 iteration, no early stop",
             "stage1_ckpt": "stage 1 iteration, gradient checkpointing", "reference": "reference-style iteration"}
    print("| image | variant | time / iter (s) | time ÷ plain | peak mem (MiB) | peak ÷ plain |")
    print("|---|---|---|---|---|---|")
    for size, times, peaks in rows:
        for mode in args.modes:
            tm = f"{times[mode]:.2f}" if mode in times else "-"
            tr = f"{times[mode] / times['plain']:.2f}" if mode in times and "plain" in times else "-"
            pk = f"{peaks[mode] / 2**20:.0f}" if mode in peaks else "-"
            mr = f"{peaks[mode] / peaks['plain']:.2f}" if mode in peaks and "plain" in peaks else "-"
            print(f"| {size}² | {names[mode]} | {tm} | {tr} | {pk} | {mr} |")
    print()
    print("| loss (16×16 tokens, 135 outpaint queries, forward+backward) | time (ms) | speed-up |")
    print("|---|---|---|")
    print(f"| reference loop | {lt['loop'] * 1e3:.2f} | 1.0× |")
    print(f"| vectorised | {lt['vectorised'] * 1e3:.2f} | {lt['loop'] / lt['vectorised']:.1f}× |")


if __name__ == "__main__":
    main()
