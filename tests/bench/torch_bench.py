"""torch_bench.py — what the CPU PyTorch peers of the model benchmarks share (tests/bench/unet,
tests/bench/discrete): the peak RSS of the process, the timing rule (warm-up, then the median and
minimum of N timed calls) and the RESULT line their run.sh tabulates (tests/bench/peer_table.py)."""
import resource
import statistics
import time

import torch


def max_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def timed_result(fn, model, mode, batch, iters, warmup, base_mib, params):
    """run fn warmup times, then iters timed times; print the RESULT line (impl=torch)"""
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    print(f"RESULT impl=torch model={model} mode={mode} batch={batch} threads={torch.get_num_threads()} "
          f"ms={statistics.median(ms):.2f} min_ms={min(ms):.2f} peak_mib={max_rss_mib():.1f} base_mib={base_mib:.1f} "
          f"params={params}", flush=True)
