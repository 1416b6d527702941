#!/usr/bin/env bash
# The CUDA checks, in one run on a GPU host that has no Rust toolchain.
#
#   scripts/gpu-check.sh [MOCO] [OUT]
#
# MOCO: a `moco` binary built elsewhere with `--features cuda` (plain or `.xz`-compressed;
# default `.device/moco.xz`). OUT: where the results go (default `$OUT`, else `gpu-check/`).
# Build and pack it on any machine with the toolchain:
#
#   scripts/offline-llvm.sh          # only without network: the LLVM that the CUDA build needs
#   cargo build --release --features cuda --bin moco
#   mkdir -p .device && strip -o .device/moco target/release/moco && xz -T0 -f .device/moco
#
# Steps (each bounded by a timeout, the whole under about 8 minutes on one recent GPU):
#   1. the binary finds libcuda and NVRTC and compiles a kernel (`moco devices`); stops if not;
#   2. `moco parity tests/golden --device cuda` (every PyTorch golden case);
#   3. `moco crosscheck --grid full --device cuda` (the same weights and images on CUDA and on
#      the CPU backend, forward and every gradient);
#   4. `moco bench`: ViT-B/16 224 px batch 128 in f32 and bf16, ResNet-50 224 px batch 64 in
#      f32 and bf16; and `benches/pytorch_baseline.py` with the same arguments (`--amp bf16`)
#      when the host's Python has torch with CUDA;
#   5. 300 steps of `moco pretrain --preset imagenet-vit-small` in bf16 (batch 256) on a folder
#      of generated JPEGs, with the kNN monitor and a checkpoint.
# Writes OUT/results.jsonl (one JSON line per measurement), OUT/summary.md (a Markdown table)
# and each step's log; exits non-zero when a check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
moco=${1:-.device/moco.xz}
out=${2:-${OUT:-gpu-check}}
mkdir -p "$out"
results="$out/results.jsonl"
summary="$out/summary.md"
: >"$results"
failed=0
start=$(date +%s)
elapsed() { echo $(($(date +%s) - start)); }

if [[ "$moco" == *.xz ]]; then
  xz -dc "$moco" >"$out/moco" || { echo "cannot decompress $moco"; exit 2; }
  moco="$out/moco"
fi
chmod +x "$moco" 2>/dev/null || true

# run NAME SECONDS COMMAND...: the command's output goes to OUT/NAME.log.
run() {
  local name=$1 limit=$2
  shift 2
  echo "=== $name ($(elapsed)s)"
  if timeout "$limit" "$@" >"$out/$name.log" 2>&1; then
    echo "ok"
    return 0
  fi
  echo "FAILED (exit $?): see $out/$name.log"
  tail -n 20 "$out/$name.log"
  failed=1
  return 1
}

{
  echo "# GPU check"
  echo
  echo "Date: $(date -u +%Y-%m-%d). GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo unknown)."
  echo
} >"$summary"

# 1. The CUDA driver and NVRTC, as the binary loads them.
echo "libraries: $(ldconfig -p 2>/dev/null | grep -oE 'lib(cuda|nvrtc)\.so[.0-9]*' | sort -u | tr '\n' ' ')"
if ! run devices 60 "$moco" devices || ! grep -qE '^  cuda:0 +CUDA device' "$out/devices.log"; then
  cat "$out/devices.log"
  echo "the binary cannot use CUDA here: stopping" | tee -a "$summary"
  exit 1
fi
run cuda-probe 120 "$moco" bench --device cuda --arch vit_tiny --img-size 32 --patch-size 4 \
  --in-chans 3 --batch 8 --steps 1 --warmup 1 || { echo "CUDA runs no step: stopping"; exit 1; }

# 2–3. Exactness.
run parity 180 "$moco" parity tests/golden --device cuda
run crosscheck 240 "$moco" crosscheck --grid full --device cuda
{
  echo "| check | result |"
  echo "|---|---|"
  echo "| parity tests/golden | $(tail -n 1 "$out/parity.log") |"
  echo "| crosscheck full grid | $(tail -n 1 "$out/crosscheck.log") |"
  echo
} >>"$summary"

# 4. Step speed against PyTorch.
torch_ok=0
if python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  torch_ok=1
fi
vit_b=(--arch vit_base --img-size 224 --patch-size 16 --in-chans 3 --batch 128 --mlp-dim 4096 --out-dim 256)
r50=(--arch resnet50 --stem imagenet --img-size 224 --in-chans 3 --batch 64 --mlp-dim 4096 --out-dim 256 --optimizer lars)
{
  echo "| configuration | precision | moco img/s | PyTorch img/s | ratio |"
  echo "|---|---|---|---|---|"
} >>"$summary"
bench() {
  local label=$1 precision=$2
  shift 2
  local name="bench-$label-$precision" ours theirs="" ratio="—"
  run "$name" 150 "$moco" bench --device cuda --steps 10 --warmup 3 --precision "$precision" "$@" || return
  ours=$(tail -n 1 "$out/$name.log")
  echo "$ours" >>"$results"
  if [ "$torch_ok" = 1 ]; then
    local amp=()
    [ "$precision" = f32 ] || amp=(--amp "$precision")
    if run "pytorch-$label-$precision" 150 python3 benches/pytorch_baseline.py --device cuda \
      --steps 10 --warmup 3 "${amp[@]}" "$@"; then
      theirs=$(tail -n 1 "$out/pytorch-$label-$precision.log")
      echo "$theirs" >>"$results"
    fi
  fi
  python3 - "$label" "$precision" "$ours" "$theirs" >>"$summary" <<'EOF'
import json, sys
label, precision, ours, theirs = sys.argv[1:]
a = json.loads(ours)["images_per_sec"]
b = json.loads(theirs)["images_per_sec"] if theirs else None
print(f"| {label} | {precision} | {a:.1f} | {b:.1f} | {a / b:.2f}× |" if b else
      f"| {label} | {precision} | {a:.1f} | — | — |")
EOF
}
bench "ViT-B/16 224px b128" f32 "${vit_b[@]}"
bench "ViT-B/16 224px b128" bf16 "${vit_b[@]}"
bench "ResNet-50 224px b64" f32 "${r50[@]}"
bench "ResNet-50 224px b64" bf16 "${r50[@]}"
echo >>"$summary"

# 5. A pretraining run as users start it.
jpegs="$out/jpegs"
run jpegs 120 "$moco" bench data --jpeg-dir "$jpegs" --images 2048 --threads 1
run_dir="$out/pretrain-vit-small"
rm -rf "$run_dir"
t0=$(date +%s)
if run pretrain 300 "$moco" pretrain --preset imagenet-vit-small --device cuda --precision bf16 \
  --data "$jpegs" --batch-size 256 --steps 300 --max-steps 300 --knn-every 100 \
  --knn-memory 1024 --knn-eval 512 --checkpoint-every 300 --workers "$(nproc)" --out "$run_dir"; then
  python3 - "$run_dir/metrics.jsonl" "$results" "$(($(date +%s) - t0))" >>"$summary" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
wall = int(sys.argv[3])
steps = [r for r in rows if r.get("type") == "step"]
knn = [r for r in rows if r.get("type") == "knn"]
record = {"check": "pretrain imagenet-vit-small bf16 b256", "steps": len(steps),
          "wall_s": wall, "images_per_sec": 256 * len(steps) / max(wall, 1),
          "loss": [steps[0]["loss"], steps[-1]["loss"]] if steps else None,
          "knn_top1": [r.get("top1") for r in knn]}
with open(sys.argv[2], "a") as f:
    f.write(json.dumps(record) + "\n")
print(f"Pretraining, imagenet-vit-small, bf16, batch 256: {record['steps']} steps in {wall} s "
      f"({record['images_per_sec']:.0f} images/s with data, kNN and checkpoint), loss "
      f"{record['loss']}, kNN top-1 {record['knn_top1']}.")
EOF
fi

echo >>"$summary"
echo "Wall time: $(elapsed) s." >>"$summary"
cat "$summary"
exit "$failed"
