"""make_stats_fixture.py — the reference numbers of tests/lua/stats_spec.lua and sweep_spec.lua's
confidence intervals and paired tests, from scipy.stats (t.ppf/cdf/sf, binom.cdf, t.interval,
ttest_rel, binomtest). Writes stats_fixture.json beside this script.

    python3 tests/reference/stats/make_stats_fixture.py
"""
import json
import os

import numpy as np
import scipy
from scipy import stats

out = {"scipy": scipy.__version__}

out["t_ppf"] = [{"p": p, "df": df, "x": float(stats.t.ppf(p, df))}
                for p, df in [(0.975, 1), (0.975, 2), (0.975, 9), (0.025, 4), (0.5, 3), (0.995, 2.5),
                              (0.9, 100), (1e-6, 5), (0.75, 0.5)]]
out["t_cdf"] = [{"x": x, "df": df, "cdf": float(stats.t.cdf(x, df)), "sf": float(stats.t.sf(x, df))}
                for x, df in [(2.0, 3), (-1.5, 7), (10.0, 2), (0.3, 1.5), (40.0, 4), (0.0, 6), (-25.0, 3)]]
out["binom_cdf"] = [{"k": k, "n": n, "p": p, "cdf": float(stats.binom.cdf(k, n, p))}
                    for k, n, p in [(3, 10, 0.5), (0, 5, 0.5), (7, 20, 0.3), (12, 40, 0.5), (5, 5, 0.2)]]

samples = [
    [0.53, 0.55, 0.49],
    [1.0, 2.0, 3.0],
    [2.0, 4.0, 9.0],
    [111.0, 110.8, 112.4, 109.9, 111.7],
    [0.1, 0.1000001],
]
out["mean_ci"] = []
for xs in samples:
    for level in (0.95, 0.9):
        a = np.asarray(xs)
        lo, hi = stats.t.interval(level, len(a) - 1, loc=a.mean(), scale=stats.sem(a))
        out["mean_ci"].append({"xs": xs, "level": level, "mean": float(a.mean()), "half": float((hi - lo) / 2)})

pairs = [
    ([0.61, 0.58, 0.66], [0.52, 0.55, 0.49]),
    ([1.0, 2.0, 3.0], [2.0, 4.0, 9.0]),
    ([0.30, 0.25, 0.41, 0.38], [0.31, 0.20, 0.35, 0.37]),
    ([10.0, 12.0, 9.5, 11.0, 10.5, 12.5], [9.0, 12.5, 9.0, 10.0, 10.0, 11.0]),
]
out["paired_t"] = []
for xs, ys in pairs:
    r = stats.ttest_rel(xs, ys)
    ci = r.confidence_interval(0.95)
    d = np.asarray(xs) - np.asarray(ys)
    out["paired_t"].append({"xs": xs, "ys": ys, "diff": float(d.mean()), "t": float(r.statistic),
                            "df": int(r.df), "p": float(r.pvalue), "ci": float((ci.high - ci.low) / 2)})

# exact McNemar: the discordant pairs of two models' hits; sign test: positive vs negative differences
rng = np.random.default_rng(13)
hits = []
for n, pa, pb in [(40, 0.6, 0.45), (25, 0.5, 0.5), (60, 0.3, 0.5)]:
    a = (rng.random(n) < pa).astype(int).tolist()
    b = (rng.random(n) < pb).astype(int).tolist()
    nb = sum(1 for x, y in zip(a, b) if x == 1 and y == 0)
    nc = sum(1 for x, y in zip(a, b) if x == 0 and y == 1)
    hits.append({"a": a, "b": b, "nb": nb, "nc": nc, "p": float(stats.binomtest(nb, nb + nc, 0.5).pvalue)})
out["mcnemar"] = hits
out["sign_test"] = []
for xs, ys in pairs:
    pos = int(sum(1 for x, y in zip(xs, ys) if x > y))
    neg = int(sum(1 for x, y in zip(xs, ys) if x < y))
    out["sign_test"].append({"xs": xs, "ys": ys, "pos": pos, "neg": neg,
                             "p": float(stats.binomtest(pos, pos + neg, 0.5).pvalue)})

# the sweep_spec summary: modes over seeds 1..3 (knn, no_knn) and the paired test knn vs no_knn
sweep = {"knn": [0.61, 0.58, 0.66], "no_knn": [0.52, 0.55, 0.49], "lafite_noise": [0.50, 0.60, 0.47]}
out["sweep"] = {"values": sweep, "ci95": {}, "paired": {}}
for mode, xs in sweep.items():
    a = np.asarray(xs)
    lo, hi = stats.t.interval(0.95, len(a) - 1, loc=a.mean(), scale=stats.sem(a))
    out["sweep"]["ci95"][mode] = float((hi - lo) / 2)
    if mode != "no_knn":
        r = stats.ttest_rel(xs, sweep["no_knn"])
        ci = r.confidence_interval(0.95)
        out["sweep"]["paired"][mode] = {"diff": float(np.mean(a - np.asarray(sweep["no_knn"]))),
                                        "t": float(r.statistic), "p": float(r.pvalue),
                                        "ci": float((ci.high - ci.low) / 2)}

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stats_fixture.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print("wrote", path)
