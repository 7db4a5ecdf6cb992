"""torch_unet_peer.py — the PyTorch peer of bench_unet.c on the CPU: the same reference UNet
(tests/reference/unet_reference.py BENCH_UNET: 32x32x3, base 64, mults 1,2,2, attention at 16
and 8, context 11x512) at batch 32, the same train step (forward, MSE, backward, AdamW lr 1e-4)
and sampling forward (no grad, eval mode), torch.set_num_threads(threads); median ms of N after
warm-up and the peak RSS of this process (ru_maxrss), which times one mode only, as bench_unet
does; the RSS after importing torch and before building the model is printed as base_mib.
Prints a RESULT line in bench_unet's format (impl=torch).
    python3 tests/bench/unet/torch_unet_peer.py [--mode train|sample] [--iters 5] [--warmup 2]"""
import argparse
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "reference"))
import unet_reference as ref  # noqa: E402

BATCH = 32


def max_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("train", "sample"), default="train")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = max_rss_mib()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = ref.UNetModel(**ref.BENCH_UNET)
    params = sum(p.numel() for p in model.parameters())
    xs = (BATCH, 3, 32, 32)
    x, target = torch.randn(xs, generator=gen), torch.randn(xs, generator=gen)
    ctx = torch.randn((BATCH, 11, 512), generator=gen)
    t = torch.randint(0, 1000, (BATCH,), generator=gen)
    train = a.mode == "train"
    model.train(train)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x, t, ctx), target)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def sample_step():
        model(x, t, ctx)

    fn = train_step if train else sample_step
    for _ in range(a.warmup):
        fn()
    ms = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    print(f"RESULT impl=torch model=unet mode={a.mode} batch={BATCH} threads={torch.get_num_threads()} "
          f"ms={statistics.median(ms):.2f} min_ms={min(ms):.2f} peak_mib={max_rss_mib():.1f} base_mib={base:.1f} "
          f"params={params}", flush=True)


if __name__ == "__main__":
    main()
