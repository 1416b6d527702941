#!/usr/bin/env python3
"""Regenerates the measured tables of the docs from the stored result files.

`benches/compare.py --record benches/results` stores each measurement as one JSON file per
comparison and CPU (a new measurement on the same CPU replaces it). The docs hold the tables
between markers:

    <!-- results: step pytorch -->
    ...generated...
    <!-- /results -->

`step pytorch` is the training step against PyTorch, `step moco` against another build of
moco, `data torchvision` (or `data pillow`) the augmentation pipelines, `gemm torch.matmul`
the matrix products. Each table has one row
per configuration and machine, the machine and the date named in the row.

    python3 benches/tables.py           # rewrite the tables in README.md and docs/*.md
    python3 benches/tables.py --check   # exit 1 if a table differs from the result files
"""
import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"(<!-- results: (\w+) ([\w.-]+) -->\n)(.*?)(<!-- /results -->)", re.S)
CONFIGS = {
    "vit_tiny": "ViT-Tiny/4, 32 px, batch 64, AdamW",
    "resnet50": "ResNet-50 (ImageNet stem), 32 px, batch 32, LARS",
}


def load_results():
    results = []
    for path in sorted((ROOT / "benches" / "results").glob("*.json")):
        r = json.loads(path.read_text())
        r["file"] = path.name
        results.append(r)
    return results


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_label(m):
    label = f"{m['cpu']}, {m.get('simd', '?')}, {m['cores']} threads"
    if m.get("gpu"):
        label = f"{m['gpu']}; {label}"
    return label


def pair_ratios(row):
    if "pair_ratios" in row:
        return row["pair_ratios"]
    return [a / b for a, b in zip(row["ours"], row["theirs"])]


def fmt(x, digits=2):
    return f"{x:,.{digits}f}"


def step_table(results, against):
    other = results[0]["against"] if results else against
    lines = [
        f"| machine | date | configuration | moco images/s | {other} images/s | ratio (median of pairs) | pairs | peak MB (moco / {other.split()[0]}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["rows"]:
            ratios = pair_ratios(row)
            peak = ""
            if "ours_peak_mb" in row:
                peak = f"{row['ours_peak_mb']:,.0f} / {row['theirs_peak_mb']:,.0f}"
            lines.append(
                f"| {machine_label(r['machine'])} | {r['machine']['date'][:10]} | "
                f"{CONFIGS.get(row['config'], row['config'])} | {fmt(statistics.median(row['ours']))} | "
                f"{fmt(statistics.median(row['theirs']))} | **{statistics.median(ratios):.2f}×** | "
                f"{', '.join(f'{x:.2f}' for x in ratios)} | {peak} |")
    return lines


def data_table(results, against):
    other = results[0]["against"] if results else against
    lines = [
        f"| machine | date | pipeline | moco images/s/thread | {other} images/s/thread | ratio (median of pairs) | pairs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["rows"]:
            ratios = pair_ratios(row)
            lines.append(
                f"| {machine_label(r['machine'])} | {r['machine']['date'][:10]} | {row['config']} | "
                f"{fmt(statistics.median(row['ours']), 1)} | {fmt(statistics.median(row['theirs']), 1)} | "
                f"**{statistics.median(ratios):.2f}×** | {', '.join(f'{x:.2f}' for x in ratios)} |")
    return lines


def gemm_table(results, against):
    other = results[0]["against"] if results else against
    lines = [
        f"| machine | date | product (m×k · k×n) | threads | moco GFLOP/s | `gemm` crate | {other} | ratio to {other.split()[0]} (median of pairs) | pairs | moco / measured peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["rows"]:
            ratios = pair_ratios(row)
            ours = statistics.median(row["ours"])
            lines.append(
                f"| {machine_label(r['machine'])} | {r['machine']['date'][:10]} | {row['config']} "
                f"({row['m']}×{row['k']} · {row['k']}×{row['n']}) | {row['threads']} | {ours:.0f} | "
                f"{statistics.median(row['gemm']):.0f} | {statistics.median(row['theirs']):.0f} | "
                f"**{statistics.median(ratios):.2f}×** | {', '.join(f'{x:.2f}' for x in ratios)} | "
                f"{ours / row['peak']:.0%} of {row['peak']:.0f} |")
    return lines


def table(results, comparison, against):
    chosen = [r for r in results if r["comparison"] == comparison and slug(r["against"].split()[0]) == against]
    if not chosen:
        raise SystemExit(f"no result file for '{comparison} {against}' in benches/results")
    chosen.sort(key=lambda r: (r["machine"]["cpu"], r["machine"]["date"]))
    lines = {"step": step_table, "gemm": gemm_table}.get(comparison, data_table)(chosen, against)
    commands = sorted({r["command"] for r in chosen})
    lines.append("")
    lines.extend(f"Measured with `{c}`." for c in commands)
    files = ", ".join(f"`benches/results/{r['file']}`" for r in chosen)
    lines.append(f"Result files: {files}.")
    return "\n".join(lines) + "\n"


def regenerate(text, results):
    return MARKER.sub(lambda m: m.group(1) + table(results, m.group(2), m.group(3)) + m.group(5), text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if a document's table is out of date")
    args = ap.parse_args()
    results = load_results()
    stale = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        new = regenerate(text, results)
        if new != text:
            stale.append(doc.relative_to(ROOT))
            if not args.check:
                doc.write_text(new)
    if args.check and stale:
        print("tables out of date (run python3 benches/tables.py):", *stale, file=sys.stderr)
        return 1
    for doc in stale:
        print(f"rewrote the tables of {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
