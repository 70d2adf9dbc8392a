#!/usr/bin/env bash
# The PPO benchmark on a lent GPU (H100/H200): the Qwen2.5-0.5B shape with random weights, bf16 autocast, 200-token
# answers, hf-ppo and TRL 1.12's PPOTrainer side by side (targets: >= 10 episodes/s, <= 16 GiB peak). From the
# repository root of a copy that carries the wheel folders .whl and .whl112 (see "Benchmark" in README.md):
#
#     bash benchmarks/gpu.sh                      # results (JSON, table, versions) to $OUT, else benchmarks/results
#
# The machine has torch, transformers, peft and accelerate but neither trl nor datasets, and no network. The carried
# wheels go, without dependencies, into /tmp/site (TRL 1.16 and whatever else the project imports that the machine
# lacks) and /tmp/site112 (TRL 1.12 alone, put before /tmp/site for the TRL side). pyarrow and pandas (datasets needs
# both) are too large to carry (55 + 12 MB): the script stops at once, saying so, if the machine lacks them.
# About 4 minutes: building the random models ~1, each side ~1.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results}
WHEELS=${WHEELS:-.whl}
WHEELS112=${WHEELS112:-.whl112}
SITE=${SITE:-/tmp/site}
SITE112=${SITE112:-/tmp/site112}
# 64 answers per update in 8 minibatches of 8, generated and scored 32 at a time (one flag sets both chunks), 2 PPO
# epochs: the settings TRL's side is compared at. Override with BENCH_FLAGS=... (docs/ppo.md, Memory, for the settings
# that fit 16 GiB: --trl no --gradient_checkpointing true with micro batches of 16).
BENCH_FLAGS=${BENCH_FLAGS:---shape qwen2.5-0.5b --bf16 true --response_length 200 --num_updates 3 --per_device_train_batch_size 8 --gradient_accumulation_steps 1 --num_mini_batches 8 --local_rollout_forward_batch_size 32 --num_ppo_epochs 2}
# wheel name : module it provides; each installed only where the machine cannot import that module
CARRIED="datasets:datasets dill:dill multiprocess:multiprocess xxhash:xxhash tensorboard:tensorboard protobuf:google.protobuf absl_py:absl"
mkdir -p "$OUT" "$SITE" "$SITE112"

for needed in pyarrow pandas; do
    if ! "$PYTHON" -c "import $needed" 2>/dev/null; then
        echo "error: this machine's $PYTHON has no $needed, which datasets needs and which is too large to carry." >&2
        echo "Download it with pip download (see README.md, Benchmark) into $WHEELS and add it to CARRIED here." >&2
        exit 1
    fi
done
for pair in $CARRIED; do
    wheel=${pair%%:*} module=${pair#*:}
    if ! PYTHONPATH=$SITE "$PYTHON" -c "import $module" 2>/dev/null; then
        "$PYTHON" -m pip install --quiet --no-index --no-deps --upgrade --target "$SITE" "$WHEELS"/"$wheel"-*.whl
    fi
done
"$PYTHON" -m pip install --quiet --no-index --no-deps --upgrade --target "$SITE" "$WHEELS"/trl-1.16.*.whl
"$PYTHON" -m pip install --quiet --no-index --no-deps --upgrade --target "$SITE112" "$WHEELS112"/trl-1.12.*.whl

# The TRL side's interpreter: the same Python with TRL 1.12 ahead of TRL 1.16.
cat > /tmp/python-trl112 <<WRAPPER
#!/bin/sh
PYTHONPATH="$SITE112:$SITE" exec "$(command -v "$PYTHON")" "\$@"
WRAPPER
chmod +x /tmp/python-trl112

export PYTHONPATH=$SITE
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
    "$PYTHON" -c "import torch, transformers, peft, accelerate, trl, datasets; print('torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__, '| trl', trl.__version__, '| datasets', datasets.__version__)"
    /tmp/python-trl112 -c "import trl; print('TRL side: trl', trl.__version__)"
} | tee "$OUT/versions.txt"
# shellcheck disable=SC2086  # BENCH_FLAGS is a list of flags
"$PYTHON" benchmarks/ppo_throughput.py $BENCH_FLAGS --trl yes --trl_python /tmp/python-trl112 \
    --work_dir /tmp/bench --output "$OUT/gpu-qwen2.5-0.5b.json" 2>&1 | tee "$OUT/gpu-qwen2.5-0.5b.log"
