#!/usr/bin/env bash
# The bench-only environment with TRL (bench/vs_trl.py, bench/trl_fixtures.py): .venv-trl, next to
# the project's .venv and separate from it (TRL 1.16 wants transformers 5; the project's NeMo pins 4.57).
# torch stays the CPU wheel this machine carries (constraints.txt), as in `make install`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_CONSTRAINT="$PWD/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
test -x .venv-trl/bin/python || python3 -m venv .venv-trl
.venv-trl/bin/pip install -q torch==2.13.0
.venv-trl/bin/pip install -q "trl==1.16.0" vaderSentiment accelerate safetensors psutil
.venv-trl/bin/python -c "import trl, transformers, torch; print('TRL', trl.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
