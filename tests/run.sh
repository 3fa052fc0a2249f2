#!/usr/bin/env bash
# The whole test suite, from a fresh clone: sets up .venv, builds, runs pytest.
# Extra arguments go to pytest (e.g. tests/run.sh -k merge).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
python -m pytest tests -q -rs "$@"
