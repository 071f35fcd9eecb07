#!/usr/bin/env bash
# Download the wheels the GPU smoke run installs offline (tests/gpu/wheels.txt) into .whl/.
#
#   bash tests/gpu/fetch_wheels.sh                 # the CUDA machine's set: CPython 3.12, linux x86_64
#   bash tests/gpu/fetch_wheels.sh --python 3.11   # the rehearsal set for this project's CPU machines
#   bash tests/gpu/fetch_wheels.sh --dest DIR      # somewhere else than <repo>/.whl
#
# Needs network access to PyPI and a pip. Wheels are fetched for the target Python with
# `pip download --no-deps --only-binary=:all: --python-version ...`, so any local Python
# will do; the sdist-only packages (antlr4-python3-runtime, wget: pure Python) are built
# with `pip wheel --no-deps`. Files already there are kept; wheels in the folder that the
# list does not name for this Python are removed, so the folder is exactly the set to carry.
# Prints each file's size and the total, and fails if the total exceeds 60 MB.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LIST="$ROOT/tests/gpu/wheels.txt"
PY_VERSION=3.12
DEST="$ROOT/.whl"
PIP="${PIP:-python3 -m pip}"
LIMIT_BYTES=60000000   # 60 MB: what the GPU run may carry (its transfer limit is 64 MiB)

while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY_VERSION="$2"; shift 2 ;;
    --dest) DEST="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "fetch_wheels.sh: unknown argument $1 (use --python X.Y, --dest DIR)" >&2; exit 2 ;;
  esac
done
case "$PY_VERSION" in
  3.[0-9]|3.[0-9][0-9]) ;;
  *) echo "fetch_wheels.sh: --python wants X.Y (e.g. 3.12), got $PY_VERSION" >&2; exit 2 ;;
esac
TAG="cp${PY_VERSION/./}"
mkdir -p "$DEST"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# A constraints file (PIP_CONSTRAINT, the CPU machines' torch pin) has no say over --no-deps
# downloads of exact versions; keep pip from applying it to build environments too.
unset PIP_CONSTRAINT

expected=()
while read -r dist version python source file; do
  case "$dist" in ''|'#'*) continue ;; esac
  if [ "$python" != any ] && [ "$python" != "$PY_VERSION" ]; then continue; fi
  expected+=("$file")
  if [ -f "$DEST/$file" ]; then continue; fi
  echo "fetch: $dist==$version ($source)"
  if [ "$source" = sdist ]; then
    $PIP wheel --quiet --no-deps --no-binary "$dist" "$dist==$version" -w "$WORK/build" \
      || { echo "fetch_wheels.sh: building $dist==$version failed" >&2; exit 1; }
    cp "$WORK/build/$file" "$DEST/$file" 2>/dev/null \
      || { echo "fetch_wheels.sh: building $dist==$version did not give $file: $(ls "$WORK/build")" >&2; exit 1; }
  else
    $PIP download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
      --implementation cp --abi "$TAG" --platform manylinux_2_28_x86_64 "$dist==$version" -d "$WORK/dl" \
      || { echo "fetch_wheels.sh: downloading $dist==$version failed" >&2; exit 1; }
    cp "$WORK/dl/$file" "$DEST/$file" 2>/dev/null \
      || { echo "fetch_wheels.sh: PyPI gave $(ls "$WORK/dl" | grep -i "^${dist//-/_}-" || echo nothing) for $dist==$version, not $file (update tests/gpu/wheels.txt)" >&2; exit 1; }
  fi
done < "$LIST"

# Anything else in the folder (another Python's set, an older version) does not travel.
for path in "$DEST"/*.whl; do
  [ -e "$path" ] || continue
  name="$(basename "$path")"
  keep=0
  for f in "${expected[@]}"; do [ "$f" = "$name" ] && keep=1 && break; done
  if [ "$keep" = 0 ]; then echo "remove (not in the Python $PY_VERSION set): $name"; rm -f "$path"; fi
done
echo "$PY_VERSION" > "$DEST/PYTHON_VERSION"

total=0
printf '%12s  %s\n' bytes "wheel (Python $PY_VERSION set, $DEST)"
for f in "${expected[@]}"; do
  size=$(stat -c %s "$DEST/$f")
  total=$((total + size))
  printf '%12d  %s\n' "$size" "$f"
done
awk -v t="$total" -v n="${#expected[@]}" -v l="$LIMIT_BYTES" \
  'BEGIN { printf "%12d  total, %d files (%.1f MB; limit %.0f MB)\n", t, n, t / 1e6, l / 1e6 }'
if [ "$total" -gt "$LIMIT_BYTES" ]; then
  echo "fetch_wheels.sh: the set is $total bytes, over the $LIMIT_BYTES-byte limit" >&2
  exit 1
fi
