"""torch_models_peer.py — the PyTorch peer of bench_gpu_models and bench_gpu_kernels: the same
two reference models (tests/reference/unet_reference.py: BENCH_UNET at batch 64, 32x32x3,
context 11x512; BENCH_TRANSFORMER at batch 16, 256 tokens), the same train step (forward, MSE,
backward, AdamW lr 1e-4) and sampling forward, eager and torch.compile, f32 (TF32 off) and bf16
autocast, median ms of N after warm-up and torch.cuda.max_memory_allocated; then torch.matmul,
F.conv2d and F.scaled_dot_product_attention on bench_gpu_kernels' shapes. Prints RESULT lines
in the knnd benches' format (impl=torch_eager / torch_compile / torch).
    python3 tests/bench/gpu/torch_models_peer.py [--iters 10] [--no-compile] [--compile-dtypes bf16]
        [--models-only|--kernels-only]"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "reference"))
import unet_reference as ref  # noqa: E402

dev = torch.device("cuda")


def inputs(unet, gen):
    B = 64 if unet else 16
    xs = (B, 3, 32, 32) if unet else (B, 256, 512)
    x = torch.randn(xs, generator=gen).to(dev)
    target = torch.randn(xs, generator=gen).to(dev)
    ctx = torch.randn((B, 11, 512), generator=gen).to(dev)
    t = torch.randint(0, 1000 if unet else 100, (B,), generator=gen).to(dev)
    return x, t, ctx, target


def timed(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    # the timed steps' peak, as bench_gpu_models takes it: not the warm-up's one-time compile,
    # autotuning or cuDNN benchmark workspaces
    torch.cuda.reset_peak_memory_stats()
    ms = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ms), min(ms)


def bench_model(name, unet, impl, dtype, iters):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = (ref.UNetModel(**ref.BENCH_UNET) if unet else ref.TransformerStack(**ref.BENCH_TRANSFORMER)).to(dev)
    params = sum(p.numel() for p in model.parameters())
    x, t, ctx, target = inputs(unet, gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fwd = torch.compile(model) if impl == "torch_compile" else model
    amp = dtype == "bf16"
    warmup = 5 if impl == "torch_compile" else 3

    def train():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            y = fwd(x, t, ctx)
        loss = F.mse_loss(y.float(), target)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def sample():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            fwd(x, t, ctx)

    for mode, fn in (("train", train), ("sample", sample)):
        model.train(mode == "train")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            med, mn = timed(fn, iters, warmup)
        except Exception as e:  # a compile failure is a result, not a crash of the whole peer
            print(f"ERROR impl={impl} model={name} mode={mode} dtype={dtype}: {type(e).__name__}: {e}".splitlines()[0])
            continue
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(f"RESULT impl={impl} model={name} mode={mode} dtype={dtype} ms={med:.3f} min_ms={mn:.3f} "
              f"peak_mib={peak:.1f} params={params}", flush=True)
    del model, opt, fwd
    torch.cuda.empty_cache()


# name, kind, sizes: as bench_gpu_kernels.c's cases
KERNELS = [
    ("gemm_4096", "gemm", (4096, 4096, 4096)),
    ("gemm_unet_qkv16", "gemm", (64 * 256, 384, 128)),
    ("gemm_unet_qkv8", "gemm", (64 * 64, 384, 128)),
    ("gemm_unet_kv_ctx", "gemm", (64 * 11, 256, 512)),
    ("conv_unet_32x32x64", "conv", (64, 64, 32, 64)),
    ("conv_unet_16x16x128", "conv", (64, 128, 16, 128)),
    ("sdpa_n1024", "attention", (64, 1024, 64)),
    ("sdpa_n4096", "attention", (64, 4096, 64)),
]


def bench_kernels(iters):
    for name, kind, s in KERNELS:
        for dname in ("f32", "tf32", "bf16"):
            dt = torch.bfloat16 if dname == "bf16" else torch.float32
            torch.backends.cuda.matmul.allow_tf32 = dname == "tf32"
            torch.backends.cudnn.allow_tf32 = dname == "tf32"
            if kind == "gemm":
                M, N, K = s
                a, b = torch.randn(M, K, device=dev, dtype=dt), torch.randn(K, N, device=dev, dtype=dt)
                fn, flops = (lambda: torch.matmul(a, b)), 2.0 * M * N * K
            elif kind == "conv":
                B, C, H, O = s
                xx, w = torch.randn(B, C, H, H, device=dev, dtype=dt), torch.randn(O, C, 3, 3, device=dev, dtype=dt)
                fn, flops = (lambda: F.conv2d(xx, w, padding=1)), 2.0 * B * O * H * H * C * 9
            else:
                BH, N, d = s
                q, k, v = (torch.randn(1, BH, N, d, device=dev, dtype=dt) for _ in range(3))
                fn, flops = (lambda: F.scaled_dot_product_attention(q, k, v)), 4.0 * BH * N * N * d
            with torch.no_grad():
                med, _ = timed(fn, iters, 3)
            print(f"RESULT impl=torch kernel={name} dtype={dname} ms={med:.4f} tflops={flops / (med * 1e-3) / 1e12:.2f}",
                  flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--models-only", action="store_true")
    ap.add_argument("--kernels-only", action="store_true")
    ap.add_argument("--models", default="unet,transformer", help="which models to time")
    ap.add_argument("--no-eager", action="store_true", help="torch.compile only (eager timed elsewhere)")
    ap.add_argument("--compile-dtypes", default="f32,bf16",
                    help="dtypes to time under torch.compile (each compile costs a minute or more)")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # convolution algorithms chosen by timing, as knnd chooses them (cudnnFind once per shape;
    # KNND_CUDNN_ALGO=heuristic for the other policy)
    torch.backends.cudnn.benchmark = True
    print(f"# torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
    if not a.kernels_only:
        for unet, name in ((True, "unet"), (False, "transformer")):
            if name not in a.models.split(","):
                continue
            for dtype in ("f32", "bf16"):
                compiled = not a.no_compile and dtype in a.compile_dtypes.split(",")
                for impl in (() if a.no_eager else ("torch_eager",)) + (("torch_compile",) if compiled else ()):
                    bench_model(name, unet, impl, dtype, a.iters)
    if not a.models_only:
        bench_kernels(max(a.iters, 20))


if __name__ == "__main__":
    main()
