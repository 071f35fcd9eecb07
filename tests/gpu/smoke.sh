#!/usr/bin/env bash
# GPU smoke run of autorlhf_nemo, offline, from the repository root of a CUDA machine:
#
#   bash tests/gpu/smoke.sh                    # checks a-e of tests/gpu/smoke.py on the GPU, 4-minute budget
#   bash tests/gpu/smoke.sh --cpu-rehearsal    # the same on the CPU with gloo (labelled REHEARSAL)
#
# Options: --python PY (the machine's Python; default pythonX.Y for the X.Y that .whl/ was
# fetched for, else python3), --budget SECONDS (for the checks; default 240, 1500 in a
# rehearsal), --venv DIR (default $TMPDIR/autorlhf_smoke_venv), --out DIR (report and logs;
# default $OUT when set, else runs/gpu_smoke), --checks abcd (a subset), --keep-venv,
# --wheels DIR (default .whl).
#
# Needs .whl/ filled by tests/gpu/fetch_wheels.sh for this Python (on a machine with
# network) and a Python whose site-packages has torch (CUDA), transformers, safetensors,
# accelerate. It makes a venv with --system-site-packages (the machine's torch and
# transformers stay in use), installs every wheel of .whl/ with --no-index --no-deps
# (lightning 2.4.0 there shadows the machine's), installs this project with --no-deps
# (editable), prints versions, runs the checks, and ends with a compact report (also in
# <out>/report.txt). Exit status 0 only when the install and every check passed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY=""
REHEARSAL=()
BUDGET=""
VENV="${TMPDIR:-/tmp}/autorlhf_smoke_venv"
OUT_DIR="${OUT:-$ROOT/runs/gpu_smoke}"
KEEP_VENV=0
CHECKS=abcd
WHL="$ROOT/.whl"
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-rehearsal) REHEARSAL=(--cpu-rehearsal); shift ;;
    --python) PY="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --venv) VENV="$2"; shift 2 ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    --keep-venv) KEEP_VENV=1; shift ;;
    --checks) CHECKS="$2"; shift 2 ;;
    --wheels) WHL="$(cd "$2" && pwd)"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "smoke.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$BUDGET" ] || { [ ${#REHEARSAL[@]} -gt 0 ] && BUDGET=1500 || BUDGET=240; }
WORK="${TMPDIR:-/tmp}/autorlhf_smoke_work"   # run directories, checkpoints: not carried back
mkdir -p "$OUT_DIR"
rm -rf "$WORK" && mkdir -p "$WORK"
LOG="$OUT_DIR/install.log"
: > "$LOG"
# Offline and on our own terms: no pip.conf (indexes, find-links, constraints) of the machine.
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
unset PIP_CONSTRAINT PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL
T0=$(date +%s)

fail() {  # the install failed: say why, in the same report form
  { echo "== autorlhf_nemo GPU smoke: INSTALL FAILED"; echo "FAIL install: $1";
    echo "(install log: $LOG)"; tail -n 20 "$LOG" | sed 's/^/      | /'; } | tee "$OUT_DIR/report.txt"
  exit 1
}

# ---------------------------------------------------------------- the wheels and the Python
ls "$WHL"/*.whl >/dev/null 2>&1 || fail "no wheels in $WHL: run tests/gpu/fetch_wheels.sh on a machine with network"
WHLV=$(cat "$WHL/PYTHON_VERSION" 2>/dev/null || echo unknown)
if [ -z "$PY" ]; then  # the Python the wheels are for, else python3
  PY=python3
  command -v "python$WHLV" >/dev/null 2>&1 && PY="python$WHLV"
fi
command -v "$PY" >/dev/null || fail "no $PY on this machine (--python PY)"
PYV=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$PYV" = "$WHLV" ] || fail "$WHL holds the Python $WHLV set but $PY is Python $PYV: run tests/gpu/fetch_wheels.sh --python $PYV"
echo "smoke.sh: Python $PYV ($(command -v "$PY")), $(ls "$WHL"/*.whl | wc -l) wheels ($(du -sh "$WHL" | cut -f1)) in $WHL"

# ---------------------------------------------------------------- venv + offline install
rm -rf "$VENV"
if ! "$PY" -m venv --system-site-packages "$VENV" >>"$LOG" 2>&1; then
  # No ensurepip (Debian without python3-venv): a venv without pip, using the machine's pip.
  rm -rf "$VENV"
  "$PY" -m venv --without-pip --system-site-packages "$VENV" >>"$LOG" 2>&1 \
    || fail "python -m venv --system-site-packages $VENV"
fi
VPY="$VENV/bin/python"
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# A machine whose python3 is itself a venv: --system-site-packages reaches the base
# interpreter's packages, not that venv's; add its site-packages behind the new venv's own.
PARENT_SITE=$("$PY" -c 'import sys, sysconfig; print(sysconfig.get_paths()["purelib"] if sys.prefix != sys.base_prefix else "")')
if [ -n "$PARENT_SITE" ]; then
  echo "$PARENT_SITE" > "$SITE/zz_machine_site.pth"
  echo "smoke.sh: $PY is a venv itself: its site-packages ($PARENT_SITE) added to the smoke venv's path"
fi
"$VPY" -m pip --version >>"$LOG" 2>&1 || fail "no pip in the venv nor on the machine"
"$VPY" -c "import torch" >>"$LOG" 2>&1 || fail "the machine's torch does not import in the venv"
"$VPY" -m pip install --no-index --no-deps "$WHL"/*.whl >>"$LOG" 2>&1 \
  || fail "pip install --no-index --no-deps $WHL/*.whl"
# The project itself: no index, no dependencies; pip builds it with setuptools/wheel from .whl.
if ! "$VPY" -m pip install --no-index --find-links "$WHL" --no-deps -e . >>"$LOG" 2>&1; then
  # Fallback: a path entry is all an editable install amounts to here (conf/ is found next to the package).
  echo "$ROOT" > "$SITE/autorlhf_nemo_smoke.pth"
  echo "smoke.sh: pip install -e . failed (see $LOG); the project is on the path through $SITE/autorlhf_nemo_smoke.pth"
fi
echo "smoke.sh: venv $VENV ready in $(( $(date +%s) - T0 )) s"

# ---------------------------------------------------------------- versions, imports
"$VPY" tests/gpu/smoke.py --versions 2>>"$LOG" || fail "version report"
T1=$(date +%s)
"$VPY" -c "import autorlhf_nemo.__main__, autorlhf_nemo.jobs; from nemo.core import ModelPT; \
from autorlhf_nemo.algorithms.trainer import RLTrainer; from autorlhf_nemo.algorithms import model_class; \
[model_class(name) for name in ('ppo', 'online_dpo', 'rloo', 'grpo', 'ilql')]" \
  >>"$LOG" 2>&1 || fail "importing the RL path (autorlhf_nemo, nemo.core.ModelPT, megatron.core, every algorithm)"
echo "smoke.sh: the RL path imports ($(( $(date +%s) - T1 )) s)"

# ---------------------------------------------------------------- the checks
timeout $((BUDGET + 60)) "$VPY" tests/gpu/smoke.py ${REHEARSAL[@]+"${REHEARSAL[@]}"} --budget "$BUDGET" --checks "$CHECKS" --out "$WORK"
RC=$?
[ $RC = 124 ] && echo "FAIL smoke.py overran its budget of $BUDGET s (killed at +60 s)" >> "$WORK/report.txt"
for f in "$WORK"/report.txt "$WORK"/*.log "$WORK"/*.json; do [ -f "$f" ] && cp "$f" "$OUT_DIR/"; done
for run in "$WORK"/run_*; do [ -f "$run/metrics.jsonl" ] && cp "$run/metrics.jsonl" "$OUT_DIR/$(basename "$run").metrics.jsonl"; done
[ "$KEEP_VENV" = 1 ] || rm -rf "$VENV"
echo
echo "================ report (also $OUT_DIR/report.txt) ================"
cat "$OUT_DIR/report.txt" 2>/dev/null || echo "FAIL smoke.py wrote no report (exit $RC)"
echo "total wall time of smoke.sh: $(( $(date +%s) - T0 )) s"
exit $RC
