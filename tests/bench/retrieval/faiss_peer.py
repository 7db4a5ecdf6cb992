"""faiss_peer.py — FAISS's own Python bindings (Debian python3-faiss) on the index files and
queries that tests/bench/bench_retrieval.c saved: the same search parameters, the same thread
count, timed the same way (best of 2 searches of all queries in one batch, k = 10). Prints
"ROW <name> <ms> <qps> <recall@10>" lines for run.sh.

Usage: python3 tests/bench/retrieval/faiss_peer.py OUTDIR D
knnd's index files are FAISS's format followed by a knnd trailer that faiss.read_index ignores.
"""
import os
import sys
import time

import faiss
import numpy as np

K = 10
PARAMS = {"flat": None, "ivf_flat": ("nprobe", 16), "ivf_pq": ("nprobe", 16), "hnsw": ("efSearch", 64)}


def main():
    out, d = sys.argv[1], int(sys.argv[2])
    faiss.omp_set_num_threads(int(os.environ.get("KNND_BENCH_THREADS", "2")))
    q = np.fromfile(os.path.join(out, "queries.f32"), dtype=np.float32).reshape(-1, d)
    faiss.normalize_L2(q)  # knnd normalises every query: inner product on unit vectors
    exact = np.fromfile(os.path.join(out, "exact_labels.i64"), dtype=np.int64).reshape(-1, K)
    for name, param in PARAMS.items():
        path = os.path.join(out, name + ".index")
        if not os.path.exists(path):
            continue
        index = faiss.read_index(path)
        if param:
            faiss.ParameterSpace().set_index_parameter(index, *param)
        best = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            _, labels = index.search(q, K)
            best = min(best, time.perf_counter() - t)
        recall = np.mean([len(set(a) & set(e)) / K for a, e in zip(labels, exact)])
        print(f"ROW {name} {best * 1e3:.2f} {len(q) / best:.0f} {recall:.4f}", flush=True)


if __name__ == "__main__":
    main()
