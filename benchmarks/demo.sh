#!/usr/bin/env bash
# The main job, from a fresh clone: sets up .venv and builds on first use, then runs the demo.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../tests/setup_env.sh"
python benchmarks/demo.py "$@"
