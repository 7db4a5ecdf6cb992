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
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "..", "reference"), os.path.join(HERE, "..")]
import unet_reference as ref  # noqa: E402
from torch_bench import max_rss_mib, timed_result  # noqa: E402

BATCH = 32


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

    timed_result(train_step if train else sample_step, "unet", a.mode, BATCH, a.iters, a.warmup, base, params)


if __name__ == "__main__":
    main()
