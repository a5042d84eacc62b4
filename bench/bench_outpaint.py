"""OutpaintPad vs ComfyUI core ImagePadForOutpaint, side by side; prints markdown tables.

    python bench/bench_outpaint.py                         # our CPU timings only
    COMFYUI_PATH=/path/to/ComfyUI python bench/bench_outpaint.py   # + core, ratio at 2048x2048

Source images are S x S (S = 512, 1024, 2048) padded by S/8 on every side, feathering 64, on the
CPU, one torch thread by default (core's loop is single-threaded Python, so this is like for like).
Each figure is the best of several runs of the process CPU time (``--clock cpu``, robust when other
processes share the machine) or of wall time (``--clock wall``); core runs ``--core-repeats`` times.
Target from the issue: ours <= 0.05x core's time at 2048x2048, feathering 64.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alignnoise_core import padding  # noqa: E402

FEATHER = 64


def load_core():
    """Core's ImagePadForOutpaint class from the checkout at COMFYUI_PATH, or None."""
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        return None
    sys.path.insert(0, root)
    from comfy.cli_args import args

    args.cpu = True
    import utils.extra_config  # noqa: F401  (register ComfyUI's `utils` before nodes.py shadows it)
    import nodes

    return nodes.ImagePadForOutpaint


CLOCK = time.process_time


def time_ours(x, pad, fill, repeats):
    box = padding.pad_box_per_side(x.shape[1], x.shape[2], pad, pad, pad, pad, multiple=8)
    padding.outpaint_pad(x, box, fill=fill, feathering=FEATHER)  # warm-up
    times = []
    for _ in range(repeats):
        t = CLOCK()
        padding.outpaint_pad(x, box, fill=fill, feathering=FEATHER)
        times.append(CLOCK() - t)
    return min(times)


def time_core(core_cls, x, pad, repeats):
    times = []
    for _ in range(repeats):
        t = CLOCK()
        core_cls().expand_image(x, pad, pad, pad, pad, FEATHER)
        times.append(CLOCK() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--core-repeats", type=int, default=2)
    ap.add_argument("--no-core-small", action="store_true", help="time core only at the largest size")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    a = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if a.clock == "cpu" else time.perf_counter
    torch.set_num_threads(a.threads)

    core_cls = load_core()
    g = torch.Generator().manual_seed(0)
    rows = []
    for s in a.sizes:
        x = torch.rand(1, s, s, 3, generator=g)
        pad = s // 8
        row = {"size": s}
        for fill in padding.FILL_MODES:
            row[fill] = time_ours(x, pad, fill, a.repeats)
        if core_cls is not None and (s == max(a.sizes) or not a.no_core_small):
            row["core"] = time_core(core_cls, x, pad, a.core_repeats)
        rows.append(row)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), {a.clock} time, best of "
          f"{a.repeats} (core: {a.core_repeats}), feathering {FEATHER}, pads S/8 on every side\n")
    fills = list(padding.FILL_MODES)
    head = "| source | " + " | ".join(f"ours `{f}`" for f in fills) + (" | core |" if core_cls else " |")
    print(head)
    print("|" + "---|" * (len(fills) + 1 + (1 if core_cls else 0)))
    for r in rows:
        cells = [f"{r[f] * 1000:.1f} ms" for f in fills]
        if core_cls:
            cells.append(f"{r['core']:.2f} s" if "core" in r else "-")
        print(f"| {r['size']}x{r['size']} | " + " | ".join(cells) + " |")

    if core_cls is not None:
        big = rows[-1]
        print(f"\nSide by side at {big['size']}x{big['size']}, feathering {FEATHER} (target: ours <= 0.05x core):\n")
        print("| node | time | ratio to core |")
        print("|---|---|---|")
        print(f"| core ImagePadForOutpaint (grey) | {big['core']:.2f} s | 1.000x |")
        for f in ("grey", "edge", "blur", "noise"):
            print(f"| OutpaintPad `{f}` | {big[f] * 1000:.1f} ms | {big[f] / big['core']:.4f}x |")
    else:
        print("\n(COMFYUI_PATH not set: core ImagePadForOutpaint not timed.)")


if __name__ == "__main__":
    main()
