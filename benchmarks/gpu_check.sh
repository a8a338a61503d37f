#!/usr/bin/env bash
# The GPU path of issue 15, end to end, in one short call on a machine with a GPU:
#   bash benchmarks/gpu_check.sh [DEVICE] [SIZE]      (defaults: cuda, small)
# 1. a 19 M-parameter Llama built in code (examples/tiny_setting.py small), its pairs and a reward;
# 2. `lossearch eval --tier finetune --json` of DPO on it: seconds, precision and the isolation in force
#    (namespaces, seccomp, audit hook, limits) as the jail reports it on this device;
# 3. the same in fp16 (loss-scaled, for GPUs without bf16) with --grad-accum 2 --group-by-length;
# 4. benchmarks/multi_run.py on this device: K runs one after another vs one stacked pass (issue 16);
# 5. a campaign of two generations of 4 with the finetune tier and its confirmation on 3 seeds.
# It prints one line per step with its wall time and leaves everything under $OUT (or a temporary folder).
# `bash benchmarks/gpu_check.sh cpu tiny` runs the same path on a CPU, as a check of the script itself.
set -euo pipefail
device="${1:-cuda}"
size="${2:-small}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$(mktemp -d)}"
export LOSSEARCH_CACHE="$out/cache"
cd "$out"
if [ "$device" != cpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
step() {  # step NAME COMMAND...: run it, print its wall time
  local name="$1"; shift
  local started; started=$(date +%s.%N)
  "$@"
  echo "gpu_check: $name took $(echo "$(date +%s.%N) - $started" | bc) s"
}
step setting python3 "$repo/examples/tiny_setting.py" setting "$size"
setting=(--model setting/model --dataset setting/pairs.jsonl --reward setting/reward.py:polite --device "$device")
step eval sh -c "lossearch eval '$repo/seeds/dpo.py' --tier finetune ${setting[*]} --json > eval.json"
python3 - <<'PY'
import json
result = json.load(open("eval.json"))
finetune = result["metrics"]["finetune"]
print("gpu_check: eval", result["status"], "fitness", finetune["fitness"], "precision", finetune["precision"],
      "device", finetune["device"], "seconds", round(finetune["seconds"], 1))
run = finetune["trials"][0]["runs"][0]
print("gpu_check: isolation of a training run on", finetune["device"], json.dumps(run["isolation"]))
PY
step eval_fp16 sh -c "lossearch eval '$repo/seeds/dpo.py' --tier finetune ${setting[*]} --precision fp16 \
  --grad-accum 2 --group-by-length --json > eval_fp16.json"
python3 - <<'PY'
import json
result = json.load(open("eval_fp16.json"))
finetune = result["metrics"]["finetune"]
print("gpu_check: eval fp16", result["status"], "fitness", finetune["fitness"], "precision", finetune["precision"],
      "grad_accum", finetune["grad_accum"], "group_by_length", finetune["group_by_length"],
      "seconds", round(finetune["seconds"], 1))
PY
# the sentiment task builds first (a few minutes), in this run's own cache
step multi_run python3 "$repo/benchmarks/multi_run.py" --device "$device" --ks 3,10,12,30 --steps 40
step campaign lossearch run --name gpu "${setting[@]}" --generations 2 --population 4 --confirm-seeds 3
lossearch leaderboard --run gpu --top 5 --format markdown > leaderboard.md
echo "gpu_check: done; results in $out"
