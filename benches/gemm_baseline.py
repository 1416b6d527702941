#!/usr/bin/env python3
"""`torch.matmul` at the shapes of `moco bench gemm`, in GFLOP/s (one JSON line per shape).

The shapes come from `moco bench gemm --list` (JSON lines on stdin or in `--shapes FILE`);
each operand is stored as moco's benchmark stores it (row-major, or the transpose of a
row-major matrix), the product written into a preallocated output, timed as moco times its
own: the median of three rounds of at least `--millis` after one warm-up call.

    target/release/moco bench gemm --list | python benches/gemm_baseline.py --threads 2
"""
import argparse
import json
import statistics
import sys
import time

import torch


def operand(rows, cols, layout):
    if layout == "rows":
        return torch.rand(rows, cols) * 2 - 1
    return (torch.rand(cols, rows) * 2 - 1).t()


def seconds_per_call(seconds, f):
    f()
    rounds = []
    for _ in range(3):
        start, calls = time.perf_counter(), 0
        while calls == 0 or time.perf_counter() - start < seconds:
            f()
            calls += 1
        rounds.append((time.perf_counter() - start) / calls)
    return statistics.median(rounds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=None, help="JSON lines of `moco bench gemm --list` (default: stdin)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--millis", type=int, default=200)
    args = ap.parse_args()
    lines = open(args.shapes).read().splitlines() if args.shapes else sys.stdin.read().splitlines()
    torch.set_num_threads(args.threads)
    for line in filter(None, lines):
        s = json.loads(line)
        m, n, k = s["m"], s["n"], s["k"]
        a, b = operand(m, k, s["a"]), operand(k, n, s["b"])
        c = torch.empty(m, n)
        torch.set_num_threads(args.threads if s["parallel"] else 1)
        t = seconds_per_call(args.millis / 1e3, lambda: torch.matmul(a, b, out=c))
        print(json.dumps({"name": s["name"], "threads": torch.get_num_threads(),
                          "gflops": 2 * m * n * k / t / 1e9, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
