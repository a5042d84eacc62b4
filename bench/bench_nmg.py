"""Benchmark Noise Map Guidance against plain DDIM inversion + plain DDIM reconstruction, on CPU.

Model: a random-weight, mid-size SD1.5-architecture ``UNet2DConditionModel`` (the SD1.5 block
layout and cross-attention width 768, channel widths reduced to 64/128/256/256, 38M parameters
instead of 860M) at a small resolution, driven through ``alignnoise_core.nmg`` (the same Step A/Step B code
the ComfyUI guider runs).

Rows (all at the same number of steps, default 50, text scale s_T = 10):
- plain: DDIM inversion (1 forward per step, batch 1) + DDIM reconstruction with CFG (1 forward per
  step at batch 2);
- NMG edit: the same inversion + the NMG reverse process (per step: Step A forward + backward at
  batch 1, Step B CFG forward at batch 2).

Per-step times are measured round-robin in one process (min over rounds), as wall time and as
process CPU time (the robust figure on a shared machine: with BENCH_THREADS=1 it is the compute
itself); the 50-step totals are 'steps x per-step'. One real end-to-end run of each variant
checks the totals (single measurement, affected by load). Peak memory: VmHWM minus the RSS after
building the model, for the first step of each kind, in a fresh subprocess each (includes the
autograd graph of Step A).

Usage: ``python bench/bench_nmg.py [--size 256] [--steps 50] [--rounds 3] [--no-e2e]``. Prints a
markdown table. Target: NMG edit / plain <= 3.5x.
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

from alignnoise_core import nmg, nmg_maps  # noqa: E402

TABLE = nmg.discrete_sigmas()
S_T = 10.0


def _build():
    from alignnoise_core.tiny_pipeline import build_unet

    # SD-layout UNet from the shared builder (same config and weights as a hand-written one, seed 0)
    return build_unet("mid", in_channels=4, seed=0, cross_attention_dim=768).eval().requires_grad_(False)


class Model:
    """Host callables (VE latent, sigma) -> eps around a diffusers UNet, as a pipeline would write them."""

    def __init__(self, unet, size):
        g = torch.Generator().manual_seed(0)
        self.unet = unet
        self.src = torch.randn(1, 77, 768, generator=g)
        self.tgt = torch.randn(1, 77, 768, generator=g)
        self.null = torch.randn(1, 77, 768, generator=g)
        self.x0 = torch.randn(1, 4, size // 8, size // 8, generator=g)

    def eps(self, ctx):
        def f(x, sigma):
            t = nmg.sigma_to_timestep(sigma, TABLE)
            return self.unet(x * nmg.vp_scale(sigma), t, encoder_hidden_states=ctx).sample

        return f

    def cfg(self, ctx):
        both = torch.cat([self.null, ctx])

        def f(x, sigma):
            t = nmg.sigma_to_timestep(sigma, TABLE)
            with torch.no_grad():
                e = self.unet(torch.cat([x, x]) * nmg.vp_scale(sigma), t, encoder_hidden_states=both).sample
            eu, ec = e.chunk(2)
            return eu + S_T * (ec - eu)

        return f


def _steps(m: Model):
    """One callable per kind of step (each does exactly one step's work)."""
    sig = nmg.ddim_sigmas(50)
    s, sn = float(sig[10]), float(sig[11])
    x = m.x0 * (1 + s**2) ** 0.5
    target = m.x0 * (1 + sn**2) ** 0.5
    inv, rec, text, null = m.eps(m.src), m.cfg(m.src), m.cfg(m.tgt), m.eps(m.null)

    def inversion():
        with torch.no_grad():
            nmg.ddim_step(x, inv(x, s), s, sn)

    def plain_recon():
        nmg.ddim_step(x, rec(x, s), s, sn)

    def nmg_step():
        nmg.nmg_step(x, s, sn, target, null, text)

    return {"inversion": inversion, "plain_recon": plain_recon, "nmg": nmg_step}


def _worker(mode: str, size: int) -> dict:
    m = Model(_build(), size)
    step = _steps(m)[mode]
    base = status_bytes("VmRSS")
    reset_peak()
    step()
    return {"mode": mode, "peak": status_bytes("VmHWM") - base}


def _timings(m: Model, rounds: int) -> tuple[dict, dict]:
    """Min wall time and min process CPU time per kind of step, interleaved round-robin."""
    steps = _steps(m)
    for f in steps.values():
        f()  # warm-up
    wall = {k: float("inf") for k in steps}
    cpu = {k: float("inf") for k in steps}
    for r in range(rounds):
        for k, f in steps.items():
            t, c = time.perf_counter(), time.process_time()
            f()
            wall[k] = min(wall[k], time.perf_counter() - t)
            cpu[k] = min(cpu[k], time.process_time() - c)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {wall[k]:.3f}s wall {cpu[k]:.3f}s cpu" for k in steps),
              file=sys.stderr)
    return wall, cpu


def _end_to_end(m: Model, steps: int) -> dict:
    sig = nmg.ddim_sigmas(steps)
    t = time.perf_counter()
    with torch.no_grad():
        maps = nmg_maps.ddim_invert(m.x0, sig, m.eps(m.src), sigma_floor=float(TABLE[0]))
    t_inv = time.perf_counter() - t
    t = time.perf_counter()
    plain = nmg_maps.ddim_sample(maps.latents[0], sig, m.cfg(m.src))
    t_plain = time.perf_counter() - t
    t = time.perf_counter()
    recon = nmg_maps.nmg_sample(maps, m.eps(m.null), m.cfg(m.src))
    t_nmg = time.perf_counter() - t
    return {"inversion": t_inv, "plain_recon": t_plain, "nmg": t_nmg,
            "err_plain": float((plain - m.x0).abs().mean()), "err_nmg": float((recon - m.x0).abs().mean())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="image size in px (latent = size/8)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (min is reported)")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end runs")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if args.worker:
        print(json.dumps(_worker(args.worker[0], int(args.worker[1]))))
        return

    unet = _build()
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    m = Model(unet, args.size)
    best, cpu = _timings(m, args.rounds)
    n = args.steps
    plain_total = n * (best["inversion"] + best["plain_recon"])
    nmg_total = n * (best["inversion"] + best["nmg"])
    plain_cpu = n * (cpu["inversion"] + cpu["plain_recon"])
    nmg_cpu = n * (cpu["inversion"] + cpu["nmg"])
    mem = {}
    if not args.no_memory:
        for mode in ("inversion", "plain_recon", "nmg"):
            out = subprocess.run([sys.executable, __file__, "--worker", mode, str(args.size)], capture_output=True,
                                 text=True, check=True)
            mem[mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak"] / 2**20

    def mb(k):
        return f"{mem[k]:.0f} MB" if k in mem else "-"

    print(f"\n### NMG vs plain DDIM inversion + reconstruction ({params:.0f}M-param SD1.5-architecture UNet, "
          f"{args.size}x{args.size} px (latent {args.size // 8}x{args.size // 8}), {n} steps, s_T = {S_T:g}, CPU "
          f"{torch.get_num_threads()} threads)\n")
    print("| step | wall time per step | CPU time per step | UNet work per step | peak memory (one step) |")
    print("|---|---|---|---|---|")
    print(f"| inversion | {best['inversion'] * 1e3:.0f} ms | {cpu['inversion'] * 1e3:.0f} ms | 1 forward, batch 1 | "
          f"{mb('inversion')} |")
    print(f"| plain reconstruction (CFG) | {best['plain_recon'] * 1e3:.0f} ms | {cpu['plain_recon'] * 1e3:.0f} ms | "
          f"1 forward, batch 2 | {mb('plain_recon')} |")
    print(f"| NMG step (A + B) | {best['nmg'] * 1e3:.0f} ms | {cpu['nmg'] * 1e3:.0f} ms | forward + backward batch 1, "
          f"forward batch 2 | {mb('nmg')} |")
    print()
    print(f"| {n} steps | plain inversion + reconstruction | NMG edit (inversion + NMG) | ratio (target <= 3.5x) |")
    print("|---|---|---|---|")
    print(f"| wall time, per-step minima | {plain_total:.1f} s | {nmg_total:.1f} s | **{nmg_total / plain_total:.2f}x** |")
    print(f"| CPU time, per-step minima | {plain_cpu:.1f} s | {nmg_cpu:.1f} s | **{nmg_cpu / plain_cpu:.2f}x** |")
    if not args.no_e2e:
        e = _end_to_end(m, n)
        p, q = e["inversion"] + e["plain_recon"], e["inversion"] + e["nmg"]
        print(f"| end-to-end, one run | {p:.1f} s | {q:.1f} s | {q / p:.2f}x |")
        print(f"\nReconstruction |x - x0| (random weights, mechanism only): plain DDIM {e['err_plain']:.3f}, "
              f"NMG (target = source prompt) {e['err_nmg']:.3f}.")


if __name__ == "__main__":
    main()
