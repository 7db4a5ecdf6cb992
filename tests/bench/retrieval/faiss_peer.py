"""faiss_peer.py — FAISS's own Python bindings (Debian python3-faiss) on the index files and
queries that tests/bench/bench_retrieval.c saved: the same search parameters, the same thread
count, timed the same way (best of 2 searches of all queries in one batch, k = 10). Prints
"ROW <name> <ms> <qps> <recall@10>" lines for run.sh.

Usage: python3 tests/bench/retrieval/faiss_peer.py OUTDIR D
knnd's index files are FAISS's format followed by a knnd trailer that faiss.read_index ignores.

The rows cache_self and knn_dups (see bench_retrieval.c) are done the way a FAISS user would:
search k + 1 and drop each query's own row; search k plus spares, drop self and duplicates,
and search again with twice as many for the queries left short. Their recall is the agreement
with knnd's rows. A numpy peer (one GEMM per block of queries, the exclusions as masks,
argpartition) is printed as a comment line beside each.
"""
import os
import sys
import time

import faiss
import numpy as np

K = 10
PARAMS = {"flat": None, "ivf_flat": ("nprobe", 16), "ivf_pq": ("nprobe", 16), "hnsw": ("efSearch", 64)}
THRESHOLD = 0.99  # knnd's default duplicate_threshold
ROWS = [r for r in os.environ.get("KNND_BENCH_ROWS", "").split(",") if r]  # as bench_retrieval.c: empty is all


def selected(name):
    return not ROWS or name in ROWS


def best_of(n, fn):
    """the best of n timings of fn(); a run over 30 s is not repeated (as bench_retrieval.c)"""
    best, out = float("inf"), None
    for i in range(n):
        if i and best > 30:
            break
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def agreement(got, ref):
    return np.mean([len(set(a) & set(e)) / K for a, e in zip(got, ref)])


def first_admissible(scores, labels, rows, exclude_duplicates):
    """the first K labels per row that are not the query's own row (nor a duplicate); -1 pads"""
    ok = (labels >= 0) & (labels != rows[:, None])
    if exclude_duplicates:
        ok &= scores <= THRESHOLD
    order = np.argsort(~ok, axis=1, kind="stable")[:, :K]  # admissible ones first, in rank order
    picked = np.take_along_axis(labels, order, axis=1)
    return np.where(np.take_along_axis(ok, order, axis=1), picked, -1)


def faiss_exclusions(index, q, exclude_duplicates):
    rows = np.arange(len(q))
    out = np.full((len(q), K), -1, dtype=np.int64)
    pending = rows
    fetch = K + 1 + (1 + K // 2 if exclude_duplicates else 0)
    while len(pending):
        fetch = min(fetch, index.ntotal)
        scores, labels = index.search(q[pending], fetch)
        got = first_admissible(scores, labels, pending, exclude_duplicates)
        full = (got >= 0).all(axis=1)
        out[pending[full]] = got[full]
        if fetch >= index.ntotal:
            break
        pending = pending[~full]
        fetch *= 2
    return out


def numpy_exclusions(xb, q, exclude_duplicates, block=256):
    out = np.empty((len(q), K), dtype=np.int64)
    for b0 in range(0, len(q), block):
        s = q[b0:b0 + block] @ xb.T
        s[np.arange(len(s)), np.arange(b0, b0 + len(s))] = -np.inf
        if exclude_duplicates:
            s[s > THRESHOLD] = -np.inf
        part = np.argpartition(-s, K, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1)
        out[b0:b0 + len(s)] = np.take_along_axis(part, order, axis=1)
    return out


def exclusion_rows(out):
    """cache_self and knn_dups: the queries are the first rows of each database"""
    for name, index_file, rows_file, dups in (("cache_self", "flat.index", "cache_rows.i64", False),
                                              ("knn_dups", "dups.index", "dups_rows.i64", True)):
        rows_path = os.path.join(out, rows_file)
        if not selected(name) or not os.path.exists(rows_path):
            continue
        knnd_rows = np.fromfile(rows_path, dtype=np.int64).reshape(-1, K)
        index = faiss.read_index(os.path.join(out, index_file))
        xb = index.reconstruct_n(0, index.ntotal)  # knnd stored them normalised
        q = np.ascontiguousarray(xb[:len(knnd_rows)])
        if dups:
            counts = np.concatenate([((q[b:b + 256] @ xb.T) > THRESHOLD).sum(axis=1) for b in range(0, len(q), 256)])
            print(f"# {name}: near-duplicates per query (cosine > {THRESHOLD}, itself included): median "
                  f"{int(np.median(counts))}, mean {counts.mean():.0f}, max {counts.max()}", flush=True)
        t, got = best_of(2, lambda: faiss_exclusions(index, q, dups))
        print(f"ROW {name} {t * 1e3:.2f} {len(q) / t:.0f} {agreement(got, knnd_rows):.4f}", flush=True)
        t, got = best_of(2, lambda: numpy_exclusions(xb, q, dups))
        print(f"# {name} numpy: {t * 1e3:.2f} ms, {len(q) / t:.0f} QPS, agreement {agreement(got, knnd_rows):.4f}",
              flush=True)


def main():
    out, d = sys.argv[1], int(sys.argv[2])
    faiss.omp_set_num_threads(int(os.environ.get("KNND_BENCH_THREADS", "2")))
    q = np.fromfile(os.path.join(out, "queries.f32"), dtype=np.float32).reshape(-1, d)
    faiss.normalize_L2(q)  # knnd normalises every query: inner product on unit vectors
    exact = np.fromfile(os.path.join(out, "exact_labels.i64"), dtype=np.int64).reshape(-1, K)
    for name, param in PARAMS.items():
        path = os.path.join(out, name + ".index")
        if not selected(name) or not os.path.exists(path):
            continue
        index = faiss.read_index(path)
        if param:
            faiss.ParameterSpace().set_index_parameter(index, *param)
        best, (_, labels) = best_of(2, lambda: index.search(q, K))
        recall = np.mean([len(set(a) & set(e)) / K for a, e in zip(labels, exact)])
        print(f"ROW {name} {best * 1e3:.2f} {len(q) / best:.0f} {recall:.4f}", flush=True)
    exclusion_rows(out)


if __name__ == "__main__":
    main()
