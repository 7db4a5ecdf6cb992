#!/usr/bin/env python3
"""torch_inception_peer.py — the PyTorch peer of bench_inception.c: pytorch-fid's InceptionV3
(dims 2048, resize_input=True, normalize_input=True, use_fid_inception=True) on the CPU with
torch.set_num_threads(threads), eval mode, no grad, random weights (the fixture's formula, no
download), batch of 50 random images at 299x299 and at 32x32; best images/s of N timed batches
after warm-up, printed as "RESULT ..." lines for tests/bench/fid/run.sh."""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "reference", "inception"))
import make_inception_fixture as fx  # noqa: E402
import pytorch_fid.inception as pfi  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="both")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sd, _ = fx.random_state_dict()
    pfi.load_state_dict_from_url = lambda *args, **kw: sd
    model = pfi.InceptionV3(output_blocks=[3]).eval()
    sizes = [299, 32] if a.size == "both" else [int(a.size)]
    for size in sizes:
        x = torch.rand(a.batch, 3, size, size, generator=torch.Generator().manual_seed(1234))
        best = float("inf")
        with torch.no_grad():
            for i in range(a.warmup + a.iters):
                t0 = time.perf_counter()
                model(x)[0]
                dt = time.perf_counter() - t0
                if i >= a.warmup:
                    best = min(best, dt)
        print(f"RESULT impl=torch size={size} batch={a.batch} threads={torch.get_num_threads()} "
              f"images_per_s={a.batch / best:.2f} s_per_batch={best:.3f}", flush=True)


if __name__ == "__main__":
    main()
