"""peer_table.py — the table that tests/bench/unet/run.sh and tests/bench/discrete/run.sh print from
the RESULT lines of knnd and its PyTorch peer (impl=knnd / impl=torch, mode=, ms=, peak_mib=,
base_mib=, params=): for each compared mode the faster of the runs, the knnd/torch time ratio, the
peak RSS, its increase over the RSS before the model was built, and the memory ratios (below 1: knnd
is faster / smaller); then one line per knnd-only mode.
    python3 tests/bench/peer_table.py LOG MODE,... [MODE=what ...]"""
import sys


def main():
    log, compared, extra = sys.argv[1], sys.argv[2].split(","), [a.split("=", 1) for a in sys.argv[3:]]
    rows = [dict(kv.split("=", 1) for kv in l.split()[1:]) for l in open(log) if l.startswith("RESULT ")]

    def best(impl, mode, key):  # the better of the runs: other processes may load the machine
        v = [float(r[key]) for r in rows if r["impl"] == impl and r["mode"] == mode]
        return min(v) if v else None

    def params(impl):
        return next((r["params"] for r in rows if r["impl"] == impl), "-")

    def fmt(v, p=0):
        return "-" if v is None else f"{v:.{p}f}"

    def ratio(a, b):
        return a / b if a is not None and b else None

    print(f"parameters: knnd {params('knnd')}, torch {params('torch')}")
    print("| mode | knnd ms | torch ms | knnd/torch | knnd MiB | torch MiB | knnd/torch | knnd +MiB | torch +MiB | knnd/torch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode in compared:
        km, tm = best("knnd", mode, "ms"), best("torch", mode, "ms")
        kp, tp = best("knnd", mode, "peak_mib"), best("torch", mode, "peak_mib")
        kb, tb = best("knnd", mode, "base_mib"), best("torch", mode, "base_mib")
        kd, td = (kp - kb if kp is not None else None), (tp - tb if tp is not None else None)
        print(f"| {mode} | {fmt(km)} | {fmt(tm)} | {fmt(ratio(km, tm), 2)} | {fmt(kp)} | {fmt(tp)} | "
              f"{fmt(ratio(kp, tp), 2)} | {fmt(kd)} | {fmt(td)} | {fmt(ratio(kd, td), 2)} |")
    for mode, what in extra:
        print(f"knnd {what}: {fmt(best('knnd', mode, 'ms'))} ms, peak {fmt(best('knnd', mode, 'peak_mib'))} MiB")
    print("MiB: peak RSS of the process; +MiB: its increase over the RSS before the model was built "
          "(knnd: at start; torch: after import torch)")


if __name__ == "__main__":
    main()
