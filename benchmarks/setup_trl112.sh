#!/usr/bin/env bash
# Builds .venv-trl112: TRL 1.12 (the last TRL with PPOTrainer) in a venv of its own, for benchmarks/ppo_throughput.py
# to run its side of the comparison. Never a project requirement: the project's .venv is untouched.
#
#     bash benchmarks/setup_trl112.sh            # from the repository root; about a minute with a local torch wheel
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-trl112
PYTHON=${PYTHON:-python3}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import trl, sys; sys.exit(not trl.__version__.startswith('1.12'))"; then
    echo "$VENV already has TRL $("$VENV/bin/python" -c 'import trl; print(trl.__version__)')"
    exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first, the CPU wheel the project's venv has (pip's find-links on this machine hold it), so that resolving TRL
# does not pull a CUDA build.
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
# TRL 1.12 pins its own transformers/accelerate ranges; peft for the LoRA both sides use.
"$VENV/bin/python" -m pip install --quiet "trl==1.12.*" peft
"$VENV/bin/python" -c "import trl, transformers, peft, accelerate, torch; print('TRL', trl.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__, '| torch', torch.__version__)"
