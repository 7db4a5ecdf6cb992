"""torch_peer.py — the PyTorch CPU peer of bench_ops.c: the same rows (same names, shapes and
FLOP counts), timed the same way (best of several runs after a warm-up), with the same thread
count (KNND_BENCH_THREADS, default 2). Prints "ROW <name> <ms> <GFLOP/s>" lines for run.sh.

Usage: python3 tests/bench/torch_peer.py [substring]    (needs torch: pip install torch numpy)
To add a row: decorate a function that returns a zero-argument step with @row(name, flops, reps).
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

THREADS = int(os.environ.get("KNND_BENCH_THREADS", "2"))
torch.set_num_threads(THREADS)
ROWS = []


def row(name, flops, reps):
    def register(make):
        ROWS.append((name, flops, reps, make))
        return make
    return register


def best_time(step, reps):
    step()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
    return best


def reps_for(flops):
    return 5 if flops > 5e9 else 10 if flops > 5e8 else 30


for n in (512, 1024, 2048):
    @row("matmul_%d" % n, 2.0 * n ** 3, reps_for(2.0 * n ** 3))
    def matmul(n=n):
        a, b = torch.randn(n, n), torch.randn(n, n)
        return lambda: a @ b


CB, CC, CO, CH, CW = 32, 64, 64, 32, 32
CONV_FLOPS = 2.0 * CB * CO * CH * CW * CC * 9


def conv_tensors(grad):
    x = torch.randn(CB, CC, CH, CW, requires_grad=grad)
    w = torch.randn(CO, CC, 3, 3, requires_grad=grad)
    b = torch.randn(CO, requires_grad=grad)
    return x, w, b


@row("conv3x3_64_fwd", CONV_FLOPS, 10)
def conv_fwd():
    x, w, b = conv_tensors(False)
    return lambda: F.conv2d(x, w, b, padding=1)


@row("conv3x3_64_fwd_bwd", 3 * CONV_FLOPS, 10)
def conv_fwd_bwd():
    x, w, b = conv_tensors(True)
    g = torch.randn(CB, CO, CH, CW)

    def step():
        x.grad = w.grad = b.grad = None
        F.conv2d(x, w, b, padding=1).backward(g)
    return step


def leaf(*shape, scale=1.0, grad=True):
    t = torch.randn(*shape) * scale
    return t.requires_grad_(grad)


def zero_grads(*ts):
    for t in ts:
        t.grad = None


# group norm as in the UNet, layer norm as in a transformer block; weight, bias, backward from g
for name, shape, groups in (("group_norm_fwd_bwd", (32, 128, 32, 32), 32), ("layer_norm_fwd_bwd", (8192, 512), 0)):
    @row(name, 0, 20)
    def norm(shape=shape, groups=groups):
        c = shape[1] if groups else shape[-1]
        x, w, b, g = leaf(*shape), leaf(c), leaf(c), leaf(*shape, grad=False)

        def step():
            zero_grads(x, w, b)
            y = F.group_norm(x, groups, w, b, 1e-5) if groups else F.layer_norm(x, (c,), w, b, 1e-5)
            y.backward(g)
        return step


# the UNet's attention at 256 tokens, 4 heads of 64: self, and cross to 11 context tokens
AB, AH, AL, AD = 32, 4, 256, 64
for name, lk in (("attn_self_256_fwd_bwd", 256), ("attn_cross_256x11_fwd_bwd", 11)):
    @row(name, 3.0 * 2.0 * AB * AH * AL * lk * (AD + AD), 20)
    def attention(lk=lk):
        q, k, v = leaf(AB, AH, AL, AD), leaf(AB, AH, lk, AD), leaf(AB, AH, lk, AD)
        g = leaf(AB, AH, AL, AD, grad=False)

        def step():
            zero_grads(q, k, v)
            F.scaled_dot_product_attention(q, k, v).backward(g)
        return step


# guided-diffusion's ResBlock (unet.py) without up/down-sampling, op by op as in bench_ops.c
RB, RHW, REMB, RGROUPS = 32, 32, 512, 32
for c in (64, 128):
    flops = 3.0 * (2 * 2.0 * RB * c * RHW * RHW * c * 9 + 2.0 * RB * REMB * c)

    @row("resblock_%d_fwd_bwd" % c, flops, reps_for(flops))
    def resblock(c=c):
        cs, ls = 1.0 / (c * 9) ** 0.5, 1.0 / REMB ** 0.5
        x, emb, g = leaf(RB, c, RHW, RHW), leaf(RB, REMB), leaf(RB, c, RHW, RHW, grad=False)
        gn1_w, gn1_b, gn2_w, gn2_b = leaf(c), leaf(c), leaf(c), leaf(c)
        conv1_w, conv1_b = leaf(c, c, 3, 3, scale=cs), leaf(c, scale=cs)
        conv2_w, conv2_b = leaf(c, c, 3, 3, scale=cs), leaf(c, scale=cs)
        emb_w, emb_b = leaf(c, REMB, scale=ls), leaf(c, scale=ls)
        leaves = (x, emb, gn1_w, gn1_b, conv1_w, conv1_b, emb_w, emb_b, gn2_w, gn2_b, conv2_w, conv2_b)

        def step():
            zero_grads(*leaves)
            h = F.conv2d(F.silu(F.group_norm(x, RGROUPS, gn1_w, gn1_b, 1e-5)), conv1_w, conv1_b, padding=1)
            h = h + F.linear(F.silu(emb), emb_w, emb_b)[:, :, None, None]
            h = F.group_norm(h, RGROUPS, gn2_w, gn2_b, 1e-5)
            h = F.conv2d(F.dropout(F.silu(h), 0.1, training=False), conv2_w, conv2_b, padding=1)
            out = x + h
            (out * g).sum().backward()
        return step


def main():
    only = sys.argv[1] if len(sys.argv) > 1 else None
    print("# torch_peer: torch %s, %d threads" % (torch.__version__, torch.get_num_threads()))
    for name, flops, reps, make in ROWS:
        if only and only not in name:
            continue
        t = best_time(make(), reps)
        print("ROW %-26s %10.3f %10.1f" % (name, t * 1e3, flops / t / 1e9), flush=True)


if __name__ == "__main__":
    main()
