#!/usr/bin/env bash
# One command on a fresh machine: make .venv from the cpu environment's lock, install mfnpatch into it,
# then run the main job.
#
#   ./quickstart.sh                                           # InsightFace from GitHub
#   MFNPATCH_UPSTREAM=/path/to/insightface ./quickstart.sh    # from a local clone or mirror
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/mfnpatch ]; then
  echo "== creating .venv from envs/cpu (hash-pinned; about 1.2 GB)"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q --require-hashes -r envs/cpu/requirements.lock
  .venv/bin/python -m pip install -q --require-hashes --no-deps -r envs/cpu/nodeps.lock
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
fi
.venv/bin/mfnpatch env check cpu
echo "== mfnpatch apply --commit 4bc8132 --series mfn,py3 --dest insightface"
set +e
.venv/bin/mfnpatch apply --commit 4bc8132 --series mfn,py3 --dest insightface
rc=$?
set -e
if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then exit "$rc"; fi
.venv/bin/mfnpatch status --dest insightface
