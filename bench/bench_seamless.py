"""Benchmark SeamlessComposite against ``cv2.seamlessClone`` (NORMAL_CLONE), side by side in one run.

Case: a square canvas with an outpaint border of ``size/8`` px on all four sides (256 px at 2048²),
Ω = that frame, 3 channels, 8-bit inputs (cv2 needs uint8; ours gets the same values as float).
Methods:
* ``ours_direct``: ``seamless_composite(method="poisson")`` as the node runs it (the frame is the canvas
  minus a rectangle, so the direct substructured solver); ``cold`` includes building the Schur
  complement for this geometry, ``warm`` reuses it (every further image of the same size, e.g. zoom
  keyframes);
* ``ours_mgpcg``: the same problem forced through multigrid-preconditioned CG (the any-mask solver);
* ``cv2``: ``cv2.seamlessClone(src, dst, mask, centre, NORMAL_CLONE)`` (opencv-python-headless).

Each row runs in a fresh subprocess with the same thread count for torch and OpenCV; it reports wall
time, CPU time (less sensitive to other jobs on a shared machine), the ratio to cv2 measured in the
same run, the final max |residual| of the 5-point equations (recomputed in float64 from the output,
ours only) and the peak RSS growth of the process during the call.

Run: ``python bench/bench_seamless.py [--sizes 512 1024 2048] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("ours_direct", "ours_mgpcg", "cv2")


def _images(size: int):
    import torch

    g = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    texture = torch.stack([torch.sin(9 * x + 3 * y), torch.cos(7 * y - 2 * x), torch.sin(5 * (x + y))], -1)
    src = (0.5 + 0.3 * texture + 0.05 * torch.rand(size, size, 3, generator=g)).clamp(0, 1)
    shift = torch.stack([0.06 * torch.cos(3 * x), -0.04 + 0.03 * y, 0.05 * torch.sin(4 * y)], -1)
    dst = (src + shift + 0.01 * torch.rand(size, size, 3, generator=g)).clamp(0, 1)
    src8 = (src * 255).round().to(torch.uint8)
    dst8 = (dst * 255).round().to(torch.uint8)
    b = size // 8
    mask = torch.ones(size, size)
    mask[b:size - b, b:size - b] = 0
    return src8, dst8, mask


def _residual(out, dst, src, mask) -> float:
    import torch

    from alignnoise_core import poisson

    c = (out - src).movedim(-1, 0).double()
    U = (mask > 0)[None]
    c = c * U
    H, W = c.shape[-2:]
    r = poisson.neighbour_count(H, W, c.device, c.dtype) * c - poisson.neighbour_sum(c)
    b = poisson.neighbour_sum((dst - src).movedim(-1, 0).double() * (~U))
    return float(((r - b) * U).abs().max())


def _run_one(method: str, size: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, ROOT)
    from alignnoise_core import seamless

    src8, dst8, mask = _images(size)
    src = src8.float()[None] / 255
    dst = dst8.float()[None] / 255
    row = {"method": method, "size": size}
    if method == "cv2":
        import cv2
        import numpy as np

        cv2.setNumThreads(threads)
        m8 = (mask * 255).to(torch.uint8).numpy()
        args = (np.ascontiguousarray(src8.numpy()), np.ascontiguousarray(dst8.numpy()), m8, (size // 2, size // 2))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0, c0 = time.perf_counter(), time.process_time()
        cv2.seamlessClone(*args, cv2.NORMAL_CLONE)
        row.update(wall=time.perf_counter() - t0, cpu=time.process_time() - c0)
    else:
        solver = "direct" if method == "ours_direct" else "multigrid"
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0, c0 = time.perf_counter(), time.process_time()
        out, _, info = seamless.seamless_composite(dst, src, mask[None], "poisson", tol=1e-5, solver=solver)
        row.update(wall=time.perf_counter() - t0, cpu=time.process_time() - c0, iterations=info["iterations"])
        if method == "ours_direct":
            t1 = time.perf_counter()
            seamless.seamless_composite(dst, src, mask[None], "poisson", tol=1e-5, solver=solver)
            row["warm"] = time.perf_counter() - t1
        row["residual"] = _residual(out[0], dst[0], src[0], mask)
    row["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024.0
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        print(json.dumps(_run_one(args._one[0], int(args._one[1]), args.threads)))
        return
    rows = []
    for size in args.sizes:
        for method in args.methods:
            cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(args.threads), "--_one", method, str(size)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": ROOT})
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    cv = {r["size"]: r for r in rows if r["method"] == "cv2"}
    print(f"threads={args.threads}; frame border = size/8 px on all sides; poisson, 3 channels, tol 1e-5")
    print(f"{'size':>6} {'method':<12} {'wall s':>8} {'cpu s':>8} {'warm s':>7} {'÷cv2 wall':>9} {'÷cv2 cpu':>9} "
          f"{'iters':>5} {'max|res|':>9} {'peak MB':>8}")
    for r in rows:
        ref = cv.get(r["size"])
        rw = f"{r['wall'] / ref['wall']:.2f}" if ref else "-"
        rc = f"{r['cpu'] / ref['cpu']:.2f}" if ref else "-"
        warm = f"{r['warm']:.2f}" if "warm" in r else "-"
        res = f"{r['residual']:.1e}" if "residual" in r else "-"
        print(f"{r['size']:>6} {r['method']:<12} {r['wall']:>8.2f} {r['cpu']:>8.2f} {warm:>7} {rw:>9} {rc:>9} "
              f"{r.get('iterations', '-'):>5} {res:>9} {r['peak_mb']:>8.0f}")


if __name__ == "__main__":
    main()
