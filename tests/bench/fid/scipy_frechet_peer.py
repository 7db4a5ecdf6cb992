"""scipy_frechet_peer.py — the Python peers of bench_frechet.c on the very inputs it wrote:
pytorch-fid's calculate_frechet_distance (scipy.linalg.sqrtm) on the 2048-d statistics, and
clean-fid's kernel_distance (m = 1000, 100 subsets) on the float32 features, plus the full-set
KID (the first 1000 rows of each set, no RNG) in numpy float64 and float32 as the precision
reference. Prints "key value" lines like the bench.

Usage: python3 scipy_frechet_peer.py <dir written by bench_frechet> <rows> [repeats=1]
"""
import sys
import time

import numpy as np

D = 2048


def kid_full(x, y):
    m = x.shape[0]
    kxx = (x @ x.T / D + 1) ** 3
    kyy = (y @ y.T / D + 1) ** 3
    kxy = (x @ y.T / D + 1) ** 3
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / (m * m))


def main():
    d, rows = sys.argv[1], int(sys.argv[2])
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    from pytorch_fid.fid_score import calculate_frechet_distance
    from cleanfid.fid import kernel_distance

    mu1 = np.fromfile(f"{d}/mu1.f64")
    mu2 = np.fromfile(f"{d}/mu2.f64")
    s1 = np.fromfile(f"{d}/sigma1.f64").reshape(D, D)
    s2 = np.fromfile(f"{d}/sigma2.f64").reshape(D, D)
    best = 1e30
    for _ in range(repeats):
        t0 = time.perf_counter()
        fid = calculate_frechet_distance(mu1, s1, mu2, s2)
        best = min(best, time.perf_counter() - t0)
    print(f"scipy_frechet_s {best:.4f}\nscipy_frechet {float(fid):.17g}")

    a = np.fromfile(f"{d}/kid_a.f32", dtype=np.float32).reshape(rows, D)
    b = np.fromfile(f"{d}/kid_b.f32", dtype=np.float32).reshape(rows, D)
    np.random.seed(0)
    t0 = time.perf_counter()
    kid = kernel_distance(a, b, num_subsets=100, max_subset_size=1000)
    print(f"cleanfid_kid_s {time.perf_counter() - t0:.4f}\ncleanfid_kid {kid:.10g}")
    x, y = a[:1000], b[:1000]
    print(f"numpy_kid_full_f64 {kid_full(x.astype(np.float64), y.astype(np.float64)):.17g}")
    print(f"numpy_kid_full_f32 {kid_full(x, y):.17g}")


if __name__ == "__main__":
    main()
