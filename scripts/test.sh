#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite: lint, type check, then pytest
# (unit, registry contract against a real etcd, kernel tests in namespaces, end to end).
# Needs root. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Under CI a test that would skip for lack of root, etcd or a kernel feature fails instead.
if [ "${CI:-}" = "true" ]; then export PYFLANNEL_REQUIRE_PRIVILEGED=1; fi
.venv/bin/ruff check pyflannel tests bench
.venv/bin/ruff format --check pyflannel tests bench
.venv/bin/mypy pyflannel
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
