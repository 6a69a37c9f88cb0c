#!/usr/bin/env bash
# The whole test suite on a fresh machine: sets up .venv (CPU torch + test tools), lints, then pytest.
#   bash scripts/run_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --test
# Lint first (pyproject.toml [tool.ruff.lint]): any finding fails the run before pytest starts.
.venv/bin/ruff check .
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [[ $rc == 5 ]]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit $rc
