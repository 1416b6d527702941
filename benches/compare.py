#!/usr/bin/env python3
"""Runs `moco bench` and the PyTorch baseline alternately and prints the speed ratio.

Each configuration runs `--pairs` times as (moco, pytorch) pairs, so that both see the same
machine state; the ratio is the median over pairs of moco's images/s over PyTorch's. Peak
memory is each run's peak resident set size. Prints a Markdown table row per configuration
and the raw JSON lines to `--out`.

    python benches/compare.py --moco target/release/moco --python /path/to/venv/bin/python

With `--data`, the pairs are `moco bench data` and `benches/data_baseline.py` (one thread,
the same JPEG files) and the table has one row per augmentation pipeline.

With `--against OTHER_MOCO`, the pairs are two builds of `moco` (e.g. before and after a
change of Burn version), alternating, and the ratio is the first's speed over the second's.

With `--gemm`, the pairs are `moco bench gemm` and `benches/gemm_baseline.py` (`torch.matmul`
at the same shapes and threads), and the table has one row per matrix product, with the
`gemm` crate and the host's measured peak beside them.

With `--record DIR` (e.g. `benches/results`), the measurement is also stored as one result
file per comparison and CPU (`step-pytorch-amd-epyc.json`, ...): every pair's figures, the
machine that `moco bench` reports, the command. A new measurement of the same comparison on the
same CPU replaces the file; `benches/tables.py` turns the files into the tables of
docs/performance.md.
"""

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

CONFIGS = {
    # ViT-Tiny, 32 px, patch 4, 3 channels, batch 64, AdamW.
    "vit_tiny": [
        "--arch", "vit_tiny", "--img-size", "32", "--patch-size", "4", "--in-chans", "3",
        "--mlp-dim", "1024", "--out-dim", "256", "--batch", "64", "--optimizer", "adamw",
    ],
    # ResNet-50 (ImageNet stem), 32 px, batch 32, LARS.
    "resnet50": [
        "--arch", "resnet50", "--stem", "imagenet", "--img-size", "32", "--in-chans", "3",
        "--mlp-dim", "1024", "--out-dim", "256", "--batch", "32", "--optimizer", "lars",
    ],
}


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_lines(cmd, key="pipeline"):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {r[key]: r for r in map(json.loads, out.strip().splitlines())}


def portable(argv):
    """The arguments with this machine's paths replaced by the names the docs use."""
    names = {"--moco": "target/release/moco", "--python": "VENV/bin/python"}
    out = []
    for i, a in enumerate(argv):
        flag = argv[i - 1] if i else ""
        if flag in names:
            out.append(names[flag])
        elif flag == "--against":
            out.append(Path(a).name)
        else:
            out.append(a)
    return out


def record(args, comparison, against, machine, rows):
    """Writes `DIR/<comparison>-<against>-<cpu>.json`, replacing an earlier measurement."""
    slug = lambda text: re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    host = slug(f"{machine['cpu']} {machine.get('simd', '')}")
    path = Path(args.record) / f"{comparison}-{slug(against.split()[0])}-{host}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    command = "python3 benches/compare.py " + " ".join(shlex.quote(a) for a in portable(sys.argv[1:]))
    result = {"comparison": comparison, "against": against, "machine": machine,
              "command": command, "rows": rows}
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"recorded {path}", file=sys.stderr)


def compare_data(args, here):
    """Augmentation pipelines, one thread each side, `--pairs` alternating runs."""
    jpegs = ["--jpeg-dir", args.jpeg_dir, "--images", "256"]
    ours, theirs = [], []
    for _ in range(args.pairs):
        ours.append(run_lines([args.moco, "bench", "data", "--threads", "1", *jpegs]))
        theirs.append(run_lines([args.python, str(here / "data_baseline.py"), *jpegs]))
        if args.out:
            with open(args.out, "a") as f:
                for r in [*ours[-1].values(), *theirs[-1].values()]:
                    f.write(json.dumps(r) + "\n")
    # The decode-only row is Pillow either way; the pipelines say which library ran them.
    backend = list(theirs[0].values())[-1].get("backend", "python")
    print(f"| pipeline | moco img/s | {backend} img/s | ratio (median of pairs) |")
    print("|---|---|---|---|")
    for name in theirs[0]:
        if name not in ours[0]:
            continue
        a = [o[name]["images_per_sec"] for o in ours]
        b = [t[name]["images_per_sec"] for t in theirs]
        ratio = statistics.median(x / y for x, y in zip(a, b))
        print(f"| {name} | {statistics.median(a):.1f} | {statistics.median(b):.1f} | {ratio:.2f}× |", flush=True)
    if args.record:
        rows = [{"config": name, "ours": [o[name]["images_per_sec"] for o in ours],
                 "theirs": [t[name]["images_per_sec"] for t in theirs]}
                for name in theirs[0] if name in ours[0]]
        record(args, "data", backend, list(ours[0].values())[0]["machine"], rows)


def compare_gemm(args, here):
    """Matrix products, `--pairs` alternating runs of ours and `torch.matmul`."""
    shapes = subprocess.run([args.moco, "bench", "gemm", "--list"], check=True, capture_output=True,
                            text=True).stdout
    ours, theirs = [], []
    for _ in range(args.pairs):
        ours.append(run_lines([args.moco, "bench", "gemm"], key="name"))
        out = subprocess.run([args.python, str(here / "gemm_baseline.py"), "--threads", str(args.threads)],
                             input=shapes, check=True, capture_output=True, text=True).stdout
        theirs.append({r["name"]: r for r in map(json.loads, out.strip().splitlines())})
        if args.out:
            with open(args.out, "a") as f:
                for r in [*ours[-1].values(), *theirs[-1].values()]:
                    f.write(json.dumps(r) + "\n")
    print("| product | threads | moco GFLOP/s | gemm crate | torch.matmul | moco / torch.matmul | moco / peak |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name, first in ours[0].items():
        a = [o[name]["ours"] for o in ours]
        b = [t[name]["gflops"] for t in theirs]
        crate = statistics.median(o[name]["gemm"] for o in ours)
        peak = statistics.median(o[name]["peak"] for o in ours)
        ratio = statistics.median(x / y for x, y in zip(a, b))
        print(f"| {name} ({first['m']}×{first['k']}·{first['k']}×{first['n']}) | {first['threads']} | "
              f"{statistics.median(a):.0f} | {crate:.0f} | {statistics.median(b):.0f} | {ratio:.2f}× | "
              f"{statistics.median(a) / peak:.0%} |", flush=True)
        rows.append({"config": name, "m": first["m"], "n": first["n"], "k": first["k"],
                     "threads": first["threads"], "kernel": first["kernel"], "ours": a, "theirs": b,
                     "gemm": [o[name]["gemm"] for o in ours], "peak": peak})
    if args.record:
        record(args, "gemm", f"torch.matmul {list(theirs[0].values())[0]['torch']}", first["machine"], rows)


def main():
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moco", default=str(here.parent / "target/release/moco"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--against", default=None, help="another moco binary instead of PyTorch")
    ap.add_argument("--configs", default="vit_tiny,resnet50")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="append every JSON result to this file")
    ap.add_argument("--data", action="store_true", help="compare the augmentation pipelines instead")
    ap.add_argument("--jpeg-dir", default="/tmp/moco-bench-jpegs")
    ap.add_argument("--gemm", action="store_true", help="compare the matrix products with torch.matmul instead")
    ap.add_argument("--record", default=None, help="store the measurement in this folder (benches/results)")
    args = ap.parse_args()
    if args.data:
        return compare_data(args, here)
    if args.gemm:
        return compare_gemm(args, here)
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    other = "PyTorch" if args.against is None else Path(args.against).name
    print(f"| config | moco img/s | {other} img/s | ratio (median of pairs) | moco peak MB | {other} peak MB |")
    print("|---|---|---|---|---|---|")
    rows, machine = [], None
    for name in args.configs.split(","):
        flags = CONFIGS[name]
        ours, theirs = [], []
        for _ in range(args.pairs):
            ours.append(run([args.moco, "bench", *flags, *common]))
            if args.against is None:
                theirs.append(run([args.python, str(here / "pytorch_baseline.py"), *flags, *common]))
            else:
                theirs.append(run([args.against, "bench", *flags, *common]))
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(ours[-1]) + "\n" + json.dumps(theirs[-1]) + "\n")
        ratio = statistics.median(a["images_per_sec"] / b["images_per_sec"] for a, b in zip(ours, theirs))
        med = lambda rs, k: statistics.median(r[k] for r in rs)
        print(f"| {name} | {med(ours, 'images_per_sec'):.2f} | {med(theirs, 'images_per_sec'):.2f} | "
              f"{ratio:.2f}× | {med(ours, 'peak_rss_mb'):.0f} | {med(theirs, 'peak_rss_mb'):.0f} |", flush=True)
        machine = ours[0]["machine"]
        rows.append({"config": name, "ours": [r["images_per_sec"] for r in ours],
                     "theirs": [r["images_per_sec"] for r in theirs],
                     "ours_peak_mb": med(ours, "peak_rss_mb"), "theirs_peak_mb": med(theirs, "peak_rss_mb")})
    if args.record:
        if args.against is None:
            against = f"PyTorch {theirs[0].get('torch', '')}".strip()
        else:
            against = f"moco {Path(args.against).name}"
        record(args, "step", against, machine, rows)


if __name__ == "__main__":
    main()
