#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the two-cell VXLAN demo (docs/demo.md) in network namespaces:
# pyflannel-lab up, check (curl across cells), status, and down.  Needs root.
#   bash scripts/demo.sh            the whole walkthrough, leaving nothing behind
#   bash scripts/demo.sh --keep     leave the lab up to explore (then: pyflannel-lab down)
#   API=v3 CELLS=3 bash scripts/demo.sh   the etcd v3 API, three cells
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
lab=(.venv/bin/pyflannel-lab)
"${lab[@]}" down >/dev/null  # a previous, interrupted run
trap '[ "${1:-}" = "--keep" ] || "${lab[@]}" down' EXIT
echo "== pyflannel-lab up --api ${API:-v2} --cells ${CELLS:-2}"
"${lab[@]}" up --api "${API:-v2}" --cells "${CELLS:-2}"
echo; echo "== pyflannel-lab check"
"${lab[@]}" check
echo; echo "== pyflannel-lab status"
"${lab[@]}" status
if [ "${1:-}" = "--keep" ]; then
  echo; echo "the lab is still up: explore with 'ip netns exec pfl-con_a curl ...', remove it with '.venv/bin/pyflannel-lab down'"
else
  echo; echo "== pyflannel-lab down"
fi
