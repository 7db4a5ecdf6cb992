"""make_fid_fixture.py — reference numbers for tests/core/test_fid_stats.c and tests/lua/metrics_spec.lua.

Features come from a counter-based generator (splitmix64 of seed·golden + element index) that
the C test reproduces bit for bit, so no feature matrix needs to be stored; only the expected
numbers (fid_fixture.txt) and small .npz files for the loader are written:

  x[r, c] = f32(max(u[r, c] + 0.5·u[r, (c+1) % d] - 0.6 + shift, 0))   ("relu" sets)
  x[r, c] = f32(u[r, c] + 0.5·u[r, (c+1) % d] - 0.6 + shift)           ("signed" sets)
  u = (splitmix64(seed·0x9E3779B97F4A7C15 + r·d + c) >> 40) · 2^-24

Every operation is exact or one correctly rounded IEEE operation in the same order in C.

References: pytorch_fid.fid_score.calculate_frechet_distance (scipy sqrtm), cleanfid.fid.
kernel_distance with the subset size equal to the row count (all rows, so the RNG does not
matter), torchmetrics' CLIPScore formula (functional/multimodal/clip_score.py:
100·cos of L2-normalised embeddings per row, then max(mean, 0)).

Run: python3 tests/reference/fid/make_fid_fixture.py   (pytorch-fid, clean-fid, torch, numpy)
"""
import os
import numpy as np
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from cleanfid.fid import kernel_distance

HERE = os.path.dirname(os.path.abspath(__file__))
M64 = (1 << 64) - 1


def uniform(seed, n, d):
    with np.errstate(over="ignore"):
        k = np.arange(n * d, dtype=np.uint64)
        z = np.uint64((seed * 0x9E3779B97F4A7C15) & M64) + k
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float64) * 2.0 ** -24).reshape(n, d)


def feats(seed, n, d, shift=0.0, relu=True):
    u = uniform(seed, n, d)
    x = u + 0.5 * np.roll(u, -1, axis=1)
    x = x - 0.6
    x = x + shift
    if relu:
        x = np.maximum(x, 0.0)
    return x.astype(np.float32)


def stats(x):
    x = x.astype(np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)


out = []
# name seed1 n1 seed2 n2 d shift2 variant
FRECHET = [
    ("d8", 1, 50, 2, 60, 8, 0.25, "plain"),
    ("d64", 3, 500, 4, 400, 64, 0.0, "plain"),
    ("d2048", 5, 3000, 6, 2500, 2048, 0.0, "plain"),
    ("rankdef256", 7, 100, 8, 120, 256, 0.0, "plain"),       # n < d: both covariances singular
    ("singular64", 9, 300, 10, 300, 64, 0.0, "dup"),        # set 1: column 1 = column 0, column 2 = 0
]
for name, s1, n1, s2, n2, d, shift, variant in FRECHET:
    a = feats(s1, n1, d)
    b = feats(s2, n2, d, shift)
    if variant == "dup":
        a[:, 1] = a[:, 0]
        a[:, 2] = 0
    mu1, sig1 = stats(a)
    mu2, sig2 = stats(b)
    fid = calculate_frechet_distance(mu1, sig1, mu2, sig2)
    out.append(f"frechet_{name} {s1} {n1} {s2} {n2} {d} {shift!r} {variant} {float(fid):.17g}")
    if name == "d8":
        np.savez(os.path.join(HERE, "stats_d8.npz"), mu=mu1, sigma=sig1)
        # float32, sigma in Fortran order: the loader's other paths
        np.savez(os.path.join(HERE, "stats_d8_f4.npz"), mu=mu1.astype(np.float32),
                 sigma=np.asfortranarray(sig1.astype(np.float32).T))
        np.savez(os.path.join(HERE, "stats_bad_dtype.npz"), mu=np.arange(8, dtype=np.int64), sigma=sig1)
        out.append(f"frechet_d8_self {float(calculate_frechet_distance(mu1, sig1, mu1, sig1)):.17g}")

# KID: 100 x 256 each, subset size 100 = all rows
ka = feats(11, 100, 256).astype(np.float64)
kb = feats(12, 100, 256, 0.05).astype(np.float64)
out.append(f"kid 11 12 100 256 0.05 {kernel_distance(ka, kb, num_subsets=3, max_subset_size=100):.17g}")

# CLIP score (torchmetrics' formula, float64)
def clip_score(img, txt):
    img = torch.from_numpy(img.astype(np.float64))
    txt = torch.from_numpy(txt.astype(np.float64))
    img = img / img.norm(p=2, dim=-1, keepdim=True)
    txt = txt / txt.norm(p=2, dim=-1, keepdim=True)
    score = 100 * (img * txt).sum(axis=-1)
    return float(torch.max(score.mean(0), torch.zeros_like(score.mean(0)))), score.numpy()

ci = feats(13, 20, 32, 0.0, relu=False)
ct = feats(14, 20, 32, 0.3, relu=False)
m, rows = clip_score(ci, ct)
out.append(f"clip_score 13 14 20 32 0.3 {m:.17g} " + " ".join(f"{r:.17g}" for r in rows))
m2, _ = clip_score(ci, -ci)
out.append(f"clip_score_negated {m2:.17g}")

with open(os.path.join(HERE, "fid_fixture.txt"), "w") as f:
    f.write("# written by make_fid_fixture.py; see its docstring for the feature generator\n")
    for line in out:
        f.write(line + "\n")
print("\n".join(l[:160] for l in out))
