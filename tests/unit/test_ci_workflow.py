""".github/workflows/ci.yml runs what .ci/run runs (nothing GitHub-only, nothing left out), each
job bounded in time, with a read-only token."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    return loaded


def scripts_in(text: str) -> set[str]:
    return set(re.findall(r"\bbash ((?:scripts|\.ci)/[\w./-]+)", text))


def test_every_script_of_ci_run_runs_in_the_workflow() -> None:
    runs = "\n".join(
        step.get("run", "") for job in workflow()["jobs"].values() for step in job["steps"]
    )
    ci_run = scripts_in((ROOT / ".ci" / "run").read_text())
    assert ci_run >= {"scripts/test.sh", "scripts/lint.sh", "scripts/validate-manifests.sh"}
    assert ".ci/run" in scripts_in(runs)  # the whole of it, on the end-to-end runner
    # and the checks that need no engine, by the same scripts, on GitHub's runners
    assert scripts_in(runs) >= {"scripts/lint.sh", "scripts/validate-manifests.sh"}
    for script in scripts_in(runs):
        assert (ROOT / script).is_file(), script


def test_the_production_image_is_built() -> None:
    image = workflow()["jobs"]["image"]
    assert any("-f deploy/Dockerfile" in step.get("run", "") for step in image["steps"])


def test_every_job_is_bounded_and_the_token_read_only() -> None:
    flow = workflow()
    assert flow["permissions"] == {"contents": "read"}
    for name, job in flow["jobs"].items():
        assert 0 < job["timeout-minutes"] <= 40, name
