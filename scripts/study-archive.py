#!/usr/bin/env python3
"""Keeps what a study's report is computed from, small enough to store: for every finished run
of STUDY_DIR, its `study_status.json`, `config.json` and the rows of `metrics.jsonl` that the
report reads (kNN evaluations; per step the loss and the gradient norm of each layer group,
to 6 significant digits), and the study's `study.json`. Checkpoints, TensorBoard files and
speed rows stay behind.

    python3 scripts/study-archive.py runs/study-cpu-depth docs/data/study-cpu-depth

Copying the archive back (`cp -r docs/data/study-cpu-depth runs/`) lets `moco study` skip the
archived runs and go on with the others, and `--report-only` redraw the report from them.
"""

import json
import shutil
import sys
from pathlib import Path


def short(x):
    return float(f"{x:.6g}") if isinstance(x, float) else x


def keep(row):
    kind = row.get("type")
    if kind == "knn":
        return {"type": "knn", "step": row["step"], "top1": row["top1"]}
    if kind == "step":
        norms = {k: short(v) for k, v in sorted(row.get("grad_norms", {}).items())}
        return {"type": "step", "step": row["step"], "loss": short(row["loss"]), "grad_norms": norms}
    if kind == "machine":
        return row
    return None


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    if not (src / "study.json").is_file():
        sys.exit(f"{src}: no study.json (not a study directory)")
    (dst / "runs").mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "study.json", dst / "study.json")
    kept = 0
    for run in sorted((src / "runs").iterdir()):
        if not (run / "study_status.json").is_file():
            continue
        out = dst / "runs" / run.name
        out.mkdir(exist_ok=True)
        for name in ["study_status.json", "config.json"]:
            shutil.copy(run / name, out / name)
        rows = []
        for line in (run / "metrics.jsonl").read_text().splitlines():
            row = keep(json.loads(line))
            if row is not None:
                rows.append(json.dumps(row, separators=(",", ":")))
        (out / "metrics.jsonl").write_text("\n".join(rows) + "\n")
        kept += 1
    print(f"{dst}: {kept} finished runs")


if __name__ == "__main__":
    main()
