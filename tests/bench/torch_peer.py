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
