"""torch_discrete_peer.py — the PyTorch peer of bench_discrete.lua on the CPU: the same network as
knnd.discrete at the issue's size (VQ-Diffusion's Text2ImageTransformer: token embedding over 1024
codes + [MASK], row and column position tables for 16x16 tokens, 8 blocks of width 512 / 8 heads
from tests/reference/unet_reference.py BENCH_TRANSFORMER, LayerNorm + Linear to 1024 logits;
11 context tokens of 512-d; batch 4), the same train step (cross-entropy of the logits against the
clean tokens, backward, AdamW lr 1e-4) and sampling forward (no grad, eval mode),
torch.set_num_threads(threads); median ms of N after warm-up, the peak RSS of this process
(ru_maxrss, one mode per process) and the RSS after import torch (base_mib). Prints a RESULT line
in bench_discrete.lua's format (impl=torch).
    python3 tests/bench/discrete/torch_discrete_peer.py [--mode train|sample] [--iters 5] [--warmup 2]"""
import argparse
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "..", "reference"), os.path.join(HERE, "..")]
import unet_reference as ref  # noqa: E402
from torch_bench import max_rss_mib, timed_result  # noqa: E402

K, H, CTX = 1024, 16, 11


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        dim = ref.BENCH_TRANSFORMER["dim"]
        self.emb = nn.Embedding(K + 1, dim)
        self.height_emb = nn.Embedding(H, dim)
        self.width_emb = nn.Embedding(H, dim)
        self.blocks = ref.TransformerStack(**ref.BENCH_TRANSFORMER)
        self.ln_out = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, K)
        self.register_buffer("pos_ids", torch.arange(H))

    def forward(self, x, t, ctx):
        pos = (self.height_emb(self.pos_ids)[:, None] + self.width_emb(self.pos_ids)[None, :]).reshape(1, H * H, -1)
        h = self.blocks(self.emb(x) + pos, t, ctx)
        return self.to_logits(self.ln_out(h)).transpose(1, 2)  # [B, K, N], as knnd.discrete


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("train", "sample"), default="train")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = max_rss_mib()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = Net()
    params = sum(p.numel() for p in model.parameters())
    B = a.batch
    x0 = torch.randint(0, K, (B, H * H), generator=gen)
    xt = torch.randint(0, K + 1, (B, H * H), generator=gen)
    t = torch.randint(0, 100, (B,), generator=gen)
    ctx = torch.randn((B, CTX, 512), generator=gen)
    train = a.mode == "train"
    model.train(train)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xt, t, ctx), x0).backward()
        opt.step()

    @torch.no_grad()
    def sample_step():
        model(xt, t, ctx)

    timed_result(train_step if train else sample_step, "discrete", a.mode, B, a.iters, a.warmup, base, params)


if __name__ == "__main__":
    main()
