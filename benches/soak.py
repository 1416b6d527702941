#!/usr/bin/env python3
"""Memory over a long run: does a training run's resident memory grow?

Runs `moco pretrain` for STEPS steps on a device with a speed record every --every steps,
then compares the resident memory (`resident_mib` of the `speed` records in metrics.jsonl)
over the first and the last 10 % of the run. On Mesa's lavapipe (`--device wgpu`) device
memory is host memory, so the same figure covers the GPU backend's buffers.

    python3 benches/soak.py --moco $CARGO_TARGET_DIR/release/moco --device cpu --steps 3000
    python3 benches/soak.py --moco $CARGO_TARGET_DIR/release/moco --device wgpu --steps 2000

Extra arguments after `--` go to `moco pretrain` (the default is a small ViT on the bundled
Fashion-MNIST, no kNN monitor, checkpoints only at the end).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

SMALL_VIT = ["--data", "bundled", "--batch-size", "32", "--knn-every", "0",
             "--knn-memory", "256", "--knn-eval", "128", "--workers", "1",
             "--checkpoint-every", "1000000"]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moco", default="target/release/moco")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--every", type=int, default=20, help="a speed record every N steps")
    ap.add_argument("--out", help="run directory (default: a temporary one)")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="-- then extra pretrain flags")
    args = ap.parse_args()
    extra = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    out = args.out or os.path.join(tempfile.mkdtemp(prefix="moco-soak-"), "run")
    cmd = [args.moco, "pretrain", "--device", args.device, "--steps", str(args.steps),
           "--log-every", str(args.every), "--quiet", "--out", out] + SMALL_VIT + extra
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - start
    with open(os.path.join(out, "metrics.jsonl")) as f:
        speed = [r for r in map(json.loads, f) if r["type"] == "speed" and "resident_mib" in r]
    steps_run = max((r["step"] for r in speed), default=0)
    if steps_run != args.steps:
        sys.exit(f"the run ended at step {steps_run} of {args.steps} ({out}/metrics.jsonl)")
    if len(speed) < 10:
        sys.exit(f"only {len(speed)} speed records with resident_mib in {out}/metrics.jsonl")
    tenth = max(1, len(speed) // 10)
    first = statistics.median(r["resident_mib"] for r in speed[:tenth])
    last = statistics.median(r["resident_mib"] for r in speed[-tenth:])
    peak = max(r["resident_mib"] for r in speed)
    result = {
        "device": args.device, "steps": args.steps, "records": len(speed),
        "first_10pct_mib": round(first, 1), "last_10pct_mib": round(last, 1),
        "growth_mib": round(last - first, 1), "peak_mib": round(peak, 1),
        "growth_per_1000_steps_mib": round((last - first) / (args.steps * 0.9) * 1000, 2),
        "wall_s": round(wall, 1), "cpu": cpu_model(), "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"), "run_dir": out,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
