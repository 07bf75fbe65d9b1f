"""deploy/monitoring: promtool accepts the alert rules and the scrape config, the dashboard is valid
JSON, and every metric an alert or a panel uses is one a running dockguard exports."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Dockguard

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
METRIC = re.compile(r"\bdockguard_[a-z_]+\b")


async def promtool(*args: str) -> tuple[int, str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing (scripts/test.sh installs Debian's prometheus)"
    proc = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_promtool_accepts_the_rules_and_the_config() -> None:
    code, out = await promtool("check", "rules", str(MONITORING / "alerts.yml"))
    assert code == 0 and "SUCCESS: 8 rules found" in out, out
    code, out = await promtool("check", "config", str(MONITORING / "prometheus.yml"))
    assert code == 0, out


def expressions() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    found = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    found += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return found


SUFFIXES = {"_total": "counter", "_bucket": "histogram", "_count": "histogram", "_sum": "histogram"}


def family_of(name: str, families: dict[str, str]) -> str | None:
    """The exported family a name in an expression refers to (`x_total` is counter `x`'s,
    `x_bucket` histogram `x`'s), or None when there is none of the right type."""
    if families.get(name) in ("gauge", "histogram", "counter"):
        return name
    for suffix, kind in SUFFIXES.items():
        base = name.removesuffix(suffix)
        if base != name and families.get(base) == kind:
            return base
    return None


async def test_every_metric_used_is_exported(dockguard: Dockguard) -> None:
    text = (await dockguard.client.get("/metrics")).text
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    used = {name for expr in expressions() for name in METRIC.findall(expr)}
    assert len(used) >= 10  # the alerts and panels use most of them
    assert {name for name in used if family_of(name, families) is None} == set()
