"""torch_dist_peer.py — the PyTorch peer of bench_dist.lua on the CPU: DistributedDataParallel over the gloo
backend (torch's CPU collectives), N processes on this machine, the same reference UNet
(tests/reference/unet_reference.py BENCH_UNET), the same step (forward, MSE, backward with DDP's bucketed
all-reduce overlapped with the backward, AdamW lr 1e-4) and the global batch split over the ranks; or an
all_reduce of `mib` MiB. Median ms after warm-up (a barrier before each step); prints a RESULT line.
    python3 tests/bench/dist/torch_dist_peer.py --ranks 2 --threads 1 --mode train --batch 16"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "..", "reference")]
import unet_reference as ref  # noqa: E402


def worker(rank, a, init):
    torch.set_num_threads(a.threads)
    tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=a.ranks)
    W = a.ranks
    if a.mode == "allreduce":
        t = torch.ones(a.mib * 1024 * 1024 // 4)
        ms = []
        for i in range(a.warmup + a.iters):
            tdist.barrier()
            t0 = time.perf_counter()
            tdist.all_reduce(t)
            if i >= a.warmup:
                ms.append((time.perf_counter() - t0) * 1e3)
        m = torch.tensor([statistics.median(ms)])
        tdist.all_reduce(m, op=tdist.ReduceOp.MAX)
        if rank == 0:
            busbw = 2 * (W - 1) / W * t.numel() * 4 / (m.item() / 1e3) / 1e9 if W > 1 else 0
            print(f"RESULT impl=torch mode=allreduce ranks={W} mib={a.mib} ms={m.item():.2f} busbw_gbs={busbw:.2f}",
                  flush=True)
        tdist.destroy_process_group()
        return
    torch.manual_seed(0)
    model = ref.UNetModel(**ref.BENCH_UNET)
    params = sum(p.numel() for p in model.parameters())
    ddp = torch.nn.parallel.DistributedDataParallel(model) if W > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    B = a.batch // W
    gen = torch.Generator().manual_seed(10 + rank)
    x, target = torch.randn((B, 3, 32, 32), generator=gen), torch.randn((B, 3, 32, 32), generator=gen)
    ctx = torch.randn((B, 11, 512), generator=gen)
    t = torch.randint(0, 1000, (B,), generator=gen)
    ms = []
    for i in range(a.warmup + a.iters):
        tdist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(ddp(x, t, ctx), target)
        loss.backward()
        opt.step()
        if i >= a.warmup:
            ms.append((time.perf_counter() - t0) * 1e3)
    m = torch.tensor([statistics.median(ms)])
    tdist.all_reduce(m, op=tdist.ReduceOp.MAX)
    if rank == 0:
        print(f"RESULT impl=torch mode=train ranks={W} threads={a.threads} batch={a.batch} ms={m.item():.1f} "
              f"samples_s={a.batch / (m.item() / 1e3):.1f} params={params}", flush=True)
    tdist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("train", "allreduce"), default="train")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--mib", type=int, default=64)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        init = "file://" + os.path.join(d, "rendezvous")
        mp.spawn(worker, args=(a, init), nprocs=a.ranks, join=True)


if __name__ == "__main__":
    main()
