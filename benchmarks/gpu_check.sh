#!/usr/bin/env bash
# The CUDA path end to end, then measured, in under 8 minutes on one GPU (issue 24).
#   A. the console scripts on the GPU (synthetic CIFAR-shaped data, no download), each step's time and peak
#      GPU memory: landscape-train (1 epoch PGD-AT, preact-resnet18, bf16 autocast, EMA), the same run
#      stopped by SIGTERM mid-epoch (exit 75) and resumed, landscape-spectrum (top-5, trace,
#      density of the adversarial loss), landscape-surface (2D), torchrun with nccl (one process per GPU
#      present: the top-5 again, its HVPs all-reduced), landscape-eval --autoattack on 64 samples;
#   B. benchmarks/gpu_check.py in the time left: seconds per gradient and HVP (graphs kept / rebuilt /
#      TF32 / forward-over-reverse / cudnn.benchmark), top-5, trace and density against PyHessian 0.1 and
#      hessian-eigenthings 1.0 with errors against a tight reference, the float32 floor with TF32 on and off
#      and by forward-over-reverse (also with BatchNorm in train mode), PGD-AT images/s in float32 and
#      bf16 autocast; PreAct-ResNet-18 and WRN-34-10, 256 samples;
#   C. benchmarks/train_throughput.py on the GPU (issue 20): landscape-train against a bare PGD-AT loop,
#      PreAct-ResNet-18 float32 / bf16 / fp16, then bf16 with channels_last, torch.compile and both, then
#      cnn-small; rows that would overrun THROUGHPUT_S (default 240) are skipped. Ends with one summary.
#
# Usage:  bash benchmarks/gpu_check.sh            (needs a CUDA GPU; fails at once without one)
#         bash benchmarks/gpu_check.sh --cpu      (dry run of the same steps on the CPU, tiny settings,
#                                                  gloo instead of nccl; checks the script, not CUDA)
# Environment: PYTHON (default python3), WORK (folder for runs and results; default a fresh temp folder),
#   BUDGET_S (seconds for A and B together, default 450), WHEELS (default .whl in the repository root),
#   PARTS (which parts run, default "console measure throughput"; "train" runs only A's two training steps).
# Packages: the GPU machine has torch, numpy, scipy, pandas, matplotlib, tqdm, scikit-learn and safetensors
#   but no network; landscape runs from this source tree, and what it lacks travels as wheels in the
#   git-ignored folder .whl, installed here into $WORK/site (no index, no dependencies). Make it once:
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform any -d .whl \
#       pyhessian==0.1 hessian-eigenthings==1.0.0a5 pyautoattack==0.2.0
#   and with the device tool: run(command="WORK=/tmp/gc bash benchmarks/gpu_check.sh; cp /tmp/gc/*.md
#     /tmp/gc/*.json $OUT/", carry=[".whl"], timeout_s=600). Commit the output as benchmarks/results/gpu_check.md.
# Exit status: 0 when every step and measurement ran (skips for time excepted), else 1.
set -uo pipefail

MODE=gpu
for a in "$@"; do
  case "$a" in
    --cpu) MODE=cpu ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $a (see --help)" >&2; exit 2 ;;
  esac
done

START=$(date +%s)
BUDGET_S=${BUDGET_S:-450}
THROUGHPUT_S=${THROUGHPUT_S:-240}
PARTS=" ${PARTS:-console measure throughput} "
has() { [[ "$PARTS" == *" $1 "* ]]; }
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK=${WORK:-$(mktemp -d -t landscape-gpu-check.XXXXXX)}
mkdir -p "$WORK"
SUMMARY="$WORK/summary.txt"
: > "$SUMMARY"
FAILED=0

if [ "$MODE" = gpu ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "gpu_check.sh: error: no NVIDIA GPU here (nvidia-smi is missing or lists none); this check needs one." \
         "Use --cpu for a dry run of the pipeline on the CPU." >&2
    exit 1
  fi
  NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
  if [ "$NGPU" -lt 1 ]; then
    echo "gpu_check.sh: error: nvidia-smi lists GPUs but torch.cuda.is_available() is False in $PY" \
         "(a CPU-only torch build, or CUDA_VISIBLE_DEVICES hides them)." >&2
    exit 1
  fi
  WHEELS=${WHEELS:-$ROOT/.whl}
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHEELS"/*.whl \
      && export PYTHONPATH="$PYTHONPATH:$WORK/site" || echo "gpu_check.sh: warning: could not install $WHEELS" >&2
  fi
  DEVICE=cuda MODEL=preact-resnet18 NPROC=$NGPU BACKEND=nccl AMP=bf16 PREEMPT_AFTER=0.5
  TRAIN=(--train-samples 2048 --batch-size 128 --steps 3 --val-samples 256)
  PRE_TRAIN=(--train-samples 3072 --batch-size 128 --steps 10 --val-samples 256)
  SPEC=(--samples 256 --top-k 5 --trace --trace-max-hvps 100 --density --density-probes 1 --density-steps 40)
  SURF=(--samples 256 --x=-1:1:9 --y=-1:1:9)
  DIST=(--samples 256 --top-k 5 --loss adversarial)
  AA=64
  MEASURE=()
  P=preact-resnet18
  THROUGHPUT=(--device cuda --rounds 2 --epochs 1 --combos "$P:off:plain:1,$P:bf16:plain:1,$P:fp16:plain:1,\
$P:bf16:channels_last:1,$P:bf16:compile:1,$P:off:compile:1,$P:bf16:compile+channels_last:1,cnn-small:off:plain:1,\
cnn-small:bf16:plain:1,cnn-small:off:compile:1")
  nvidia-smi -L
  "$PY" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")'
else
  DEVICE=cpu MODEL=cnn-small-bn NPROC=2 BACKEND=gloo AMP=off PREEMPT_AFTER=0.5
  TRAIN=(--train-samples 128 --batch-size 64 --steps 1 --val-samples 32 --val-steps 1)
  PRE_TRAIN=(--train-samples 512 --batch-size 64 --steps 3 --val-samples 32 --val-steps 1)
  SPEC=(--samples 32 --top-k 1 --max-hvps 15 --trace --trace-max-hvps 8 --density --density-probes 1 --density-steps 6)
  SURF=(--samples 32 --x=-1:1:3 --y=-1:1:3)
  DIST=(--samples 32 --top-k 1 --max-hvps 15 --loss adversarial)
  AA=8
  MEASURE=(--cpu)
  THROUGHPUT=(--device cpu --procs 1 --rounds 1 --epochs 1 --rows cnn-small --amp off --variants plain)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
echo "gpu_check ($MODE): $MODEL on synthetic-cifar10, device $DEVICE, $NPROC process(es) with $BACKEND; files in $WORK"

# step NAME CLI ARGS...: run landscape.cli.CLI's main(ARGS) in one process (at most 4 minutes), then print (and add to the summary)
# its wall time and the peak GPU memory that PyTorch allocated (torch.cuda.max_memory_allocated).
step() {
  local name=$1 cli=$2
  shift 2
  SUMMARY="$SUMMARY" timeout 240 "$PY" - "$name" "$cli" "$@" <<'PYEOF' || FAILED=1
import importlib, os, sys, time
import torch
name, cli, *argv = sys.argv[1:]
main = importlib.import_module(f"landscape.cli.{cli}").main
cuda = torch.cuda.is_available()
if cuda:
    torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
try:
    rc = main(argv)
except SystemExit as e:
    rc = e.code if isinstance(e.code, int) else 1
dt = time.perf_counter() - t
peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else "n/a (cpu)"
line = f"{name:<36} exit {rc}  {dt:8.1f} s  GPU memory peak {peak}"
print(f"[gpu_check] {line}", flush=True)
with open(os.environ["SUMMARY"], "a") as f:
    f.write(line + "\n")
sys.exit(rc)
PYEOF
}

RUN="$WORK/runs/gpu-check"
if has console || has train; then
step "train (1 epoch PGD-AT, $AMP, EMA)" train --method at --dataset synthetic-cifar10 --model "$MODEL" --epochs 1 \
  "${TRAIN[@]}" --amp "$AMP" --ema 0.99 --runs-dir "$WORK/runs" --name gpu-check --overwrite --device "$DEVICE" \
  --quiet --json "$WORK/train.json"
CK="$RUN/last.pt"

# preemption: SIGTERM in the middle of the first epoch (once the run has written config.json), which must
# write a mid-epoch last.pt and exit 75; then --resume must finish the run.
PRE="$WORK/runs/preempt"
t0=$(date +%s.%N)
"$PY" -m landscape.cli.train --method at --dataset synthetic-cifar10 --model "$MODEL" --epochs 1 "${PRE_TRAIN[@]}" \
  --amp "$AMP" --ema 0.99 --runs-dir "$WORK/runs" --name preempt --overwrite --device "$DEVICE" --quiet &
pid=$!
for _ in $(seq 600); do [ -f "$PRE/config.json" ] && break; sleep 0.1; done
sleep "$PREEMPT_AFTER"
kill -TERM "$pid" 2>/dev/null
wait "$pid"; rc=$?
timeout 240 "$PY" -m landscape.cli.train --resume "$PRE" --device "$DEVICE" --quiet; rc2=$?
t1=$(date +%s.%N)
[ "$rc" = 75 ] && [ "$rc2" = 0 ] || FAILED=1
printf '%-36s exit %s then %s  %6.1f s  (SIGTERM after %s s: 75 = checkpointed mid-epoch; --resume: 0)\n' \
  "preempt (SIGTERM, --resume)" "$rc" "$rc2" "$(awk "BEGIN {print $t1 - $t0}")" "$PREEMPT_AFTER" >> "$SUMMARY"
fi
if has console; then
step "spectrum (top-k, trace, density)" spectrum "$CK" --loss adversarial "${SPEC[@]}" --device "$DEVICE" \
  --json "$WORK/spectrum.json"
step "surface (2D, clean)" surface "$CK" --dim 2 "${SURF[@]}" --device "$DEVICE" --out "$WORK/surface"

echo "torchrun: $NPROC process(es), $BACKEND"
t0=$(date +%s.%N)
timeout 180 "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m landscape.cli.spectrum "$CK" \
  "${DIST[@]}" --device "$DEVICE" --json "$WORK/spectrum_dist.json"
rc=$?
[ "$rc" = 0 ] || FAILED=1
t1=$(date +%s.%N)
printf '%-36s exit %s  %8.1f s  (%s processes, %s; wall time incl. start-up)\n' "torchrun spectrum (top-k)" \
  "$rc" "$(awk "BEGIN {print $t1 - $t0}")" "$NPROC" "$BACKEND" >> "$SUMMARY"

step "eval (PGD-20 + AutoAttack, n=$AA)" eval "$CK" --autoattack --samples "$AA" --device "$DEVICE" \
  --json "$WORK/eval.json"

"$PY" - "$WORK" <<'PYEOF' >> "$SUMMARY" || echo "(could not read the result files; see $WORK)" >> "$SUMMARY"
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
s, d, e = (json.loads((w / f).read_text()) for f in ("spectrum.json", "spectrum_dist.json", "eval.json"))
fmt = lambda r: ", ".join(f"{v:.4g}" for v in (r.get("top_eigenvalues") or {}).get("values", []))
print(f"top eigenvalues (1 process): {fmt(s)}")
print(f"top eigenvalues (torchrun, world {d.get('world_size')}): {fmt(d)}")
print(f"trace {(s.get('trace') or {}).get('estimate')}; HVPs {s.get('hvps')}; device {s.get('device')}; "
      f"TF32 {s.get('operator', {}).get('tf32')}")
print(f"eval: clean {e.get('clean_acc')}, PGD {e.get('pgd_acc')}, AutoAttack {e.get('autoattack_acc')} (n={e.get('n')})")
PYEOF
fi

: > "$WORK/gpu_check.md"
if has measure; then
LEFT=$(( BUDGET_S - ($(date +%s) - START) ))
echo "measurements: $LEFT s left of $BUDGET_S"
timeout $(( LEFT + 120 )) "$PY" "$ROOT/benchmarks/gpu_check.py" "${MEASURE[@]}" --budget-s "$LEFT" --out "$WORK" \
  > "$WORK/gpu_check.md" \
  || FAILED=1
fi

: > "$WORK/train_throughput.md"
if has throughput; then
  echo "train throughput: $THROUGHPUT_S s"
  timeout $(( THROUGHPUT_S + 180 )) "$PY" "$ROOT/benchmarks/train_throughput.py" "${THROUGHPUT[@]}" \
    --budget-s "$THROUGHPUT_S" --json "$WORK/train_throughput.json" > "$WORK/train_throughput.md" || FAILED=1
fi

{
  echo "# gpu_check ($MODE), $(date -u +%Y-%m-%d), $(basename "$ROOT")@$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo "## A. the console scripts"
  echo
  echo '```'
  cat "$SUMMARY"
  echo '```'
  echo
  echo "## B. measurements (benchmarks/gpu_check.py)"
  echo
  cat "$WORK/gpu_check.md"
  echo
  echo "## C. training throughput (benchmarks/train_throughput.py)"
  echo
  cat "$WORK/train_throughput.md"
  echo
  echo "total: $(( $(date +%s) - START )) s"
} > "$WORK/report.md"
echo
echo "==== gpu_check ($MODE) summary ===="
cat "$WORK/report.md"
exit "$FAILED"
