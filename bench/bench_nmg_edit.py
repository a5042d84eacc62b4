"""Benchmark NMGEdit (two-branch NMG + attention control) against the single-branch NMG edit, through ComfyUI.

Run (CPU, needs a ComfyUI checkout)::

    COMFYUI_PATH=/work/comfy/ComfyUI /work/comfy/venv/bin/python bench/bench_nmg_edit.py [--size 256] [--width 320]

Model: an SD1.5-layout UNet (4 levels, attention at the first three, 8 heads) built from ComfyUI's
classes under ``inference_mode``; ``--width 320`` is SD1.5 itself. Its GroupNorm weights are set to 1
(the harness's random init zeroes them, which would make the UNet output 0). The text encoder is the
harness's random CLIP-L (real tokenizer). cfg 10, grad_scale 5000, s_m 10, L1, ``--steps`` DDIM steps.

Rows (times are minima over ``--rounds``, measured round-robin in one process; the inversion is done
once and not timed):

* single-branch NMG edit: ``CLIPTextEncode`` of the target prompt + ``NMGGuidance`` through
  ``SamplerCustomAdvanced`` (ddim, DisableNoise): what its graph runs per edit;
* ``NMGEdit`` with each method (it encodes both prompts itself): the source branch (Step A + Step B)
  and the edit branch in one batch.

Target: an edit with a controller ÷ the single-branch edit <= 2.2. "stored attention" is what the
controller keeps between attention calls (the chosen words' maps at the 1/4-latent level).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import comfy_harness as ch  # noqa: E402
from test_comfy_nmg_edit import live  # noqa: E402

SRC, TGT = "a photo of a cat sitting on the grass", "a photo of a dog sitting on the grass"


def build(width: int):
    mp = live(ch.tiny_model(4, 0, num_heads=8, model_channels=width, channel_mult=[1, 2, 4, 4],
                            num_res_blocks=[2, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                            transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]))
    return mp, sum(p.numel() for p in mp.model.diffusion_model.parameters())


def clip_model():
    import comfy.sd
    import folder_paths

    path = folder_paths.get_full_path("checkpoints", ch.make_checkpoint("sd15"))
    return comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=True)[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--width", type=int, default=320, help="UNet base channels (320 = SD1.5)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    ch.init_for_bench(args.threads)
    import comfy.samplers
    nodes = ch._state["nodes"].NODE_CLASS_MAPPINGS
    from alignnoise_core.comfy_host import nmg_edit as host
    model, n_params = build(args.width)
    with torch.inference_mode():
        clip = clip_model()
        enc = nodes["CLIPTextEncode"]()
        pos_src, neg = enc.encode(clip, SRC)[0], enc.encode(clip, "")[0]
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "ddim_uniform",
                                                      args.steps).cpu()
        x0 = torch.randn(1, 4, args.size // 8, args.size // 8, generator=torch.Generator().manual_seed(0))
        maps, inverted = nodes["NMGInvert"].execute(model, pos_src, {"samples": x0}, sigmas).result

    def single():
        with torch.inference_mode():
            target = enc.encode(clip, TGT)[0]
            g = nodes["NMGGuidance"].execute(model, target, neg, maps, cfg=10.0, grad_scale=5000.0,
                                             noise_map_scale=10.0, loss="l1", start_percent=0.0,
                                             end_percent=1.0).result[0]
            noise = nodes["DisableNoise"].execute().result[0]
            nodes["SamplerCustomAdvanced"].execute(noise, g, comfy.samplers.sampler_object("ddim"), sigmas, inverted)
        return None

    def edit(method, tgt=TGT, **kw):
        def run():
            with torch.inference_mode():
                return host.nmg_edit(model, clip, neg, maps, SRC, tgt, host.EditSettings(method=method, **kw),
                                     cfg=10.0, grad_scale=5000.0, noise_map_scale=10.0)
        return run

    variants = {
        "single-branch NMG edit (NMGGuidance)": single,
        "NMGEdit, no control": edit("none"),
        "NMGEdit, p2p_replace + local blend": edit("p2p_replace", blend_source_word="cat", blend_target_word="dog"),
        "NMGEdit, p2p_refine + reweight": edit("p2p_refine", tgt="a photo of a fluffy cat sitting on the grass",
                                               reweight_words="fluffy"),
        "NMGEdit, masactrl": edit("masactrl", tgt="a photo of a cat jumping on the grass", masactrl_step=1),
    }
    best = {k: float("inf") for k in variants}
    stored = {}
    for fn in variants.values():
        fn()  # warm-up
    for r in range(args.rounds):
        for name, fn in variants.items():
            t = time.perf_counter()
            out = fn()
            best[name] = min(best[name], time.perf_counter() - t)
            if out is not None:
                stored[name] = out.controller.stored_bytes()
        print(f"  round {r + 1}: " + ", ".join(f"{v:.1f}s" for v in best.values()), file=sys.stderr, flush=True)
    base = best["single-branch NMG edit (NMGGuidance)"]
    print(f"# NMGEdit through ComfyUI (CPU, torch {torch.__version__}, {torch.get_num_threads()} threads)\n")
    print(f"SD1.5-layout UNet, base width {args.width} ({n_params / 1e6:.0f}M params), {args.size}² px, "
          f"{args.steps} DDIM steps, cfg 10; min of {args.rounds} rounds.\n")
    print("| variant | time (s) | ÷ single-branch | stored attention (bytes) |")
    print("|---|---:|---:|---:|")
    for name in variants:
        print(f"| {name} | {best[name]:.2f} | {best[name] / base:.2f} | {stored.get(name, '—')} |")


if __name__ == "__main__":
    main()
