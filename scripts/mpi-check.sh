#!/usr/bin/env bash
# A run over processes with MPI, on this machine over loopback: 2 processes × 1 CPU replica.
#  1. the losses of 4 steps equal the single-device run's on the same batches (within 1e-4),
#     for MoCo v3 (keys gathered) and SimCLR (negatives gathered with their gradient);
#  2. a process killed mid-run ends the others with an error, within the timeout (no hang);
#  3. `--resume` continues from the last checkpoint (here up to step 24, with --stop-after);
#  4. SIGTERM to every process stops them all at one step with its checkpoint (status 75),
#     and the same command line with `--resume auto` continues to the end.
# Usage: scripts/mpi-check.sh [path/to/moco]   (built with `--features mpi`)
set -euo pipefail
moco=$(realpath "${1:-target/release/moco}")
dir=$(mktemp -d)
launcher=""
trap '[ -n "$launcher" ] && kill "$launcher" 2>/dev/null; rm -rf "$dir"' EXIT
# Open MPI refuses to start as root unless told; CI containers run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun=(mpirun -n 2 --oversubscribe --bind-to none)
common=(--device cpu --batch-size 32 --knn-every 0 --knn-memory 256 --knn-eval 128
        --workers 1 --log-every 1 --collective-timeout 60)

for method in mocov3 simclr; do
echo "--- 1. two processes against one device, 4 steps of $method"
"$moco" pretrain "${common[@]}" --method $method --max-steps 4 --quiet --out "$dir/single-$method"
"${mpirun[@]}" "$moco" pretrain "${common[@]}" --method $method --max-steps 4 --quiet --mpi \
  --out "$dir/two-$method"
python3 - "$dir/single-$method/metrics.jsonl" "$dir/two-$method/metrics.jsonl" <<'PY'
import json, sys
def losses(path):
    return [r["loss"] for r in map(json.loads, open(path)) if r["type"] == "step"]
one, two = losses(sys.argv[1]), losses(sys.argv[2])
assert len(one) == len(two) == 4, (one, two)
gap = max(abs(a - b) for a, b in zip(one, two))
print("losses, one device: ", " ".join(f"{x:.6f}" for x in one))
print("losses, 2 processes:", " ".join(f"{x:.6f}" for x in two))
print(f"largest difference {gap:.2e}")
assert gap <= 1e-4, "the losses differ by more than 1e-4"
PY
done

echo "--- 2. process 1 killed mid-run"
# The processes of this job carry a marker in their environment: found by it, not by name.
run="$dir/killed"
"${mpirun[@]}" -x MOCO_MPI_CHECK="$dir" "$moco" pretrain "${common[@]}" --max-steps 400 \
  --checkpoint-every 2 --quiet --mpi --out "$run" > "$dir/killed.log" 2>&1 &
launcher=$!
for _ in $(seq 600); do
  [ -d "$run/checkpoints/step-00000004" ] && break
  sleep 0.2
done
test -d "$run/checkpoints/step-00000004"
job_processes() {  # prints "PID RANK" for each process of the job still alive
  for pid in $(pgrep -x moco); do
    environ=$({ tr '\0' '\n' < "/proc/$pid/environ"; } 2>/dev/null || true)
    if grep -qx "MOCO_MPI_CHECK=$dir" <<< "$environ"; then
      rank=$(sed -n 's/^OMPI_COMM_WORLD_RANK=//p' <<< "$environ")
      echo "$pid ${rank:-?}"
    fi
  done
}
victim=$(job_processes | awk '$2 == 1 {print $1}')
test -n "$victim"
kill -9 "$victim"
start=$(date +%s)
status=0
wait "$launcher" || status=$?
launcher=""
elapsed=$(( $(date +%s) - start ))
echo "the job ended ${elapsed} s after the kill, exit status $status"
test "$status" -ne 0
test "$elapsed" -le 60
if [ -n "$(job_processes)" ]; then echo "a process of the job is left running"; exit 1; fi
grep -iE "signal 9|killed" "$dir/killed.log" | head -n 3

echo "--- 3. --resume from the last checkpoint"
last=$(ls "$run/checkpoints" | tail -n 1)
echo "newest checkpoint: $last"
"${mpirun[@]}" "$moco" pretrain --mpi --resume --out "$run" --stop-after 24 --quiet \
  --collective-timeout 60
steps=$(python3 -c "import json,sys; print(sorted(r['step'] for r in map(json.loads, open(sys.argv[1])) if r['type'] == 'step') == list(range(1, 25)))" "$run/metrics.jsonl")
echo "metrics.jsonl holds steps 1 to 24, each once: $steps"
test "$steps" = True
test -d "$run/checkpoints/step-00000024"

echo "--- 4. SIGTERM to every process (a preemption): all stop at one step with its checkpoint"
run="$dir/preempted"
job=("$moco" pretrain "${common[@]}" --max-steps 40 --checkpoint-every 1000 --quiet --mpi \
  --resume auto --out "$run")
"${mpirun[@]}" -x MOCO_MPI_CHECK="$dir" "${job[@]}" > "$dir/preempted.log" 2>&1 &
launcher=$!
for _ in $(seq 600); do
  logged=$(grep -c '"type":"step"' "$run/metrics.jsonl" 2>/dev/null || true)
  [ "${logged:-0}" -ge 3 ] && break
  sleep 0.2
done
kill -TERM $(job_processes | awk '{print $1}')
status=0
wait "$launcher" || status=$?
launcher=""
steps=$(grep -c '"type":"step"' "$run/metrics.jsonl")
echo "stopped after step $steps, checkpoints: $(ls "$run/checkpoints" | tr '\n' ' '), exit status $status"
test "$status" -eq 75
test "$(ls "$run/checkpoints")" = "$(printf 'step-%08d' "$steps")"
test "$steps" -lt 40
"${mpirun[@]}" "${job[@]}"
steps=$(python3 -c "import json,sys; print(sorted(r['step'] for r in map(json.loads, open(sys.argv[1])) if r['type'] == 'step') == list(range(1, 41)))" "$run/metrics.jsonl")
echo "the same command continued to step 40, each step once: $steps"
test "$steps" = True
echo "MPI check passed"
