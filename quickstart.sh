#!/usr/bin/env bash
# One command on a fresh machine: make .venv from the cpu environment's lock, install mfnpatch into it,
# then run the main job: apply the patch sets at 4bc8132 and run the whole may16 recipe on the CPU
# (the smoke profile: synthetic data, every stage for real, every check), then print where the report is.
#
#   ./quickstart.sh                                           # InsightFace from GitHub
#   ./quickstart.sh --source /path/to/insightface             # from a local clone or mirror
#   MFNPATCH_UPSTREAM=/path/to/insightface ./quickstart.sh    # the same
set -euo pipefail
cd "$(dirname "$0")"
SOURCE=()
while [ $# -gt 0 ]; do
  case "$1" in
    --source) SOURCE=(--source "$2"); shift 2 ;;
    --source=*) SOURCE=(--source "${1#--source=}"); shift ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "quickstart.sh: unknown argument $1 (it takes --source PATH|URL)" >&2; exit 64 ;;
  esac
done
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
echo "== mfnpatch apply --commit 4bc8132 --series mfn,py3 --dest insightface ${SOURCE[*]}"
set +e
.venv/bin/mfnpatch apply --commit 4bc8132 --series mfn,py3 --dest insightface "${SOURCE[@]}"
rc=$?
set -e
if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then exit "$rc"; fi
echo "== mfnpatch recipe run may16 --profile smoke (every stage on the CPU; about 8 minutes on 2 cores)"
.venv/bin/mfnpatch recipe run may16 --profile smoke --tree insightface "${SOURCE[@]}"
