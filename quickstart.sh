#!/usr/bin/env bash
# One command on a fresh machine: create .venv with mfnpatch, then run the main job.
#
#   ./quickstart.sh                       # InsightFace from GitHub
#   MFNPATCH_UPSTREAM=/path/to/insightface ./quickstart.sh   # from a local clone or mirror
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "== mfnpatch apply --commit 4bc8132 --series mfn,py3 --dest insightface"
set +e
.venv/bin/mfnpatch apply --commit 4bc8132 --series mfn,py3 --dest insightface
rc=$?
set -e
if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then exit "$rc"; fi
.venv/bin/mfnpatch status --dest insightface
