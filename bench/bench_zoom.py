"""Benchmark ZoomInterpolate's frame synthesis: frames/s and peak extra memory, side by side.

Methods (all render the same keyframes, 30 frames per keyframe, zoom 2):
* ``ours``: ``alignnoise_core.zoom.render_frames`` (exact sub-pixel float geometry, antialiased
  bicubic, feathered re-paste), writing into one preallocated IMAGE batch;
* ``a1111_pil``: the v8hid/A1111 recipe re-implemented with PIL (integer ``ceil`` crop of the next
  keyframe, LANCZOS resize, LANCZOS-shrunk previous keyframe pasted with a hard edge), uint8 frames
  converted to one float IMAGE batch as a ComfyUI node would have to;
* ``torch_interp``: per-frame ``F.interpolate(antialias=True)`` on integer-rounded rectangles (the
  obvious torch port), also writing into one batch.

Each measurement runs in a fresh subprocess; peak memory is the growth of the process's max RSS
during rendering, reported beside the size of the output batch itself. Besides wall-clock fps the
table gives frames per CPU-second, which is far less sensitive to other jobs on a shared machine.

Run: ``python bench/bench_zoom.py [--sizes 512 1024] [--keyframes 3] [--fpk 30]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("ours", "a1111_pil", "torch_interp")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _keyframes(n: int, size: int):
    import torch

    g = torch.Generator().manual_seed(0)
    low = torch.rand(n, 3, 32, 32, generator=g)
    kf = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return kf.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def _render_ours(kf, fpk):
    from alignnoise_core import zoom as Z

    return Z.render_frames(kf, Z.ZoomSettings(zoom=2.0, frames_per_keyframe=fpk, feather=8))


def _render_a1111_pil(kf, fpk):
    import numpy as np
    import torch
    from PIL import Image

    n, h, w, _ = kf.shape
    mw, mh = w // 4, h // 4
    imgs = [Image.fromarray((k.numpy() * 255).round().astype(np.uint8)) for k in kf]
    frames = [imgs[0]]
    for i in range(n - 1):
        prev, nxt = imgs[i], imgs[i + 1]
        for j in range(fpk - 1):
            iw = math.ceil((1 - (1 - 2 * mw / w) ** (1 - (j + 1) / fpk)) * w / 2)
            ih = math.ceil((1 - (1 - 2 * mh / h) ** (1 - (j + 1) / fpk)) * h / 2)
            frame = nxt.crop((iw, ih, w - iw, h - ih)).resize((w, h), Image.LANCZOS)
            iw2 = math.ceil((1 - (w - 2 * mw) / (w - 2 * iw)) / 2 * w)
            ih2 = math.ceil((1 - (h - 2 * mh) / (h - 2 * ih)) / 2 * h)
            frame.paste(prev.resize((w - 2 * iw2, h - 2 * ih2), Image.LANCZOS), (iw2, ih2))
            frames.append(frame)
        frames.append(nxt)
    out = torch.empty((len(frames), h, w, 3))
    for f, im in enumerate(frames):
        out[f] = torch.from_numpy(np.asarray(im)).float() / 255.0
    return out


def _render_torch_interp(kf, fpk):
    import torch
    import torch.nn.functional as F

    n, h, w, c = kf.shape
    out = torch.empty(((n - 1) * fpk + 1, h, w, c))
    chw = kf.permute(0, 3, 1, 2)
    f = 0
    for i in range(n - 1):
        for j in range(fpk):
            if j == 0:
                out[f] = kf[i]
            else:
                t = j / fpk
                s = 2.0 ** (1 - t)
                cw, ch = round(w / s / 2) * 2, round(h / s / 2) * 2
                x0, y0 = (w - cw) // 2, (h - ch) // 2
                frame = F.interpolate(chw[i + 1:i + 2, :, y0:y0 + ch, x0:x0 + cw], size=(h, w), mode="bicubic",
                                      align_corners=False, antialias=True)
                pw, ph = round(w * s / 4) * 2, round(h * s / 4) * 2
                inner = F.interpolate(chw[i:i + 1], size=(ph, pw), mode="bicubic", align_corners=False,
                                      antialias=True)
                px, py = (w - pw) // 2, (h - ph) // 2
                frame[:, :, py:py + ph, px:px + pw] = inner
                out[f] = frame[0].clamp(0, 1).permute(1, 2, 0)
            f += 1
    out[f] = kf[-1]
    return out


def worker(method: str, size: int, n: int, fpk: int) -> dict:
    import torch

    sys.path.insert(0, ROOT)
    kf = _keyframes(n, size)
    fn = {"ours": _render_ours, "a1111_pil": _render_a1111_pil, "torch_interp": _render_torch_interp}[method]
    fn(kf[:, :64, :64].contiguous(), 3)  # warm-up (imports, allocator)
    before = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    frames = fn(kf, fpk)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _rss_mb()
    out_mb = frames.numel() * frames.element_size() / 2**20
    frame_mb = out_mb / frames.shape[0]
    assert frames.shape[0] == (n - 1) * fpk + 1
    del torch
    return {"method": method, "size": size, "frames": frames.shape[0], "seconds": dt, "fps": frames.shape[0] / dt,
            "fps_per_core": frames.shape[0] / cpu,
            "peak_mb": peak - before, "output_mb": out_mb, "extra_frames": (peak - before - out_mb) / frame_mb}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--keyframes", type=int, default=3)
    p.add_argument("--fpk", type=int, default=30, help="frames per keyframe")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--worker", nargs=4, metavar=("METHOD", "SIZE", "N", "FPK"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        m, s, n, f = a.worker
        print(json.dumps(worker(m, int(s), int(n), int(f))))
        return
    import torch

    rows = []
    for size in a.sizes:
        for method in a.methods:
            res = subprocess.run([sys.executable, __file__, "--worker", method, str(size), str(a.keyframes),
                                  str(a.fpk)], capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"  {method} {size}: {rows[-1]['fps']:.1f} fps", file=sys.stderr)
    print(f"ZoomInterpolate frame synthesis, {a.keyframes} keyframes x {a.fpk} frames/keyframe, zoom 2, "
          f"CPU ({torch.get_num_threads()} threads, torch {torch.__version__})\n")
    print("| size | method | frames | fps | fps vs ours | frames per CPU-second | peak extra RSS (MB) | "
          "output batch (MB) | extra beyond output (frames) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in a.sizes:
        ours = next((r for r in rows if r["size"] == size and r["method"] == "ours"), None)
        for r in (r for r in rows if r["size"] == size):
            ratio = f"{r['fps'] / ours['fps']:.2f}x" if ours else "-"
            print(f"| {size}² | {r['method']} | {r['frames']} | {r['fps']:.1f} | {ratio} | {r['fps_per_core']:.1f} | "
                  f"{r['peak_mb']:.0f} | {r['output_mb']:.0f} | {r['extra_frames']:.1f} |")
    print("\nfps = wall clock (depends on how busy the CPU is); frames per CPU-second = frames / process CPU "
          "time over all threads (a dedicated core would render about that many).")


if __name__ == "__main__":
    main()
