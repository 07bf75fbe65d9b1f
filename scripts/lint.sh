#!/usr/bin/env bash
# The static checks, as .ci/run and .github/workflows/ci.yml both run them: the formatter (check
# only), the linter, and mypy (strict) over every Python file of the project.
set -euo pipefail
cd "$(dirname "$0")/.."
paths=(src tests bench examples scripts deploy)
.venv/bin/ruff format --check "${paths[@]}"
.venv/bin/ruff check "${paths[@]}"
.venv/bin/mypy  # src and tests (pyproject.toml)
.venv/bin/mypy --strict examples bench scripts/schemathesis_hooks.py deploy/healthcheck.py
