"""The engine host's INPUT rules of egress builds: pruning never removes a rule whose network
exists, and concurrent cleanups may delete the same rule. The firewall and the engine's network
listing are fakes here (the real ones are exercised by tests/e2e/test_build_network.py)."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

import pytest

from dockguard.sandbox import egress, names


class FakeFirewall:
    """An INPUT chain answering `-S`, `-I` and `-D` like iptables (the same rule set for both
    tools, which is all these tests need)."""

    def __init__(self) -> None:
        self.rules: list[list[str]] = []
        self.deleted: list[str] = []

    async def __call__(self, tool: str, args: list[str]) -> str:
        verb, rule = args[0], args[1:]
        if verb == "-S":
            return "\n".join(["-P INPUT ACCEPT", *(shlex.join(["-A", *r]) for r in self.rules)])
        if verb == "-I":
            self.rules.insert(0, rule)
            return ""
        if verb == "-D":
            if rule not in self.rules:
                raise egress.EgressUnavailable(f"{tool} -D INPUT failed (1): Bad rule")
            self.rules.remove(rule)
            self.deleted.append(rule[rule.index("--comment") + 1])
            return ""
        raise AssertionError(args)


class FakeNetworks:
    """The engine's network listing; `then` runs right after a listing is taken (another job
    acting between two of prune's reads)."""

    def __init__(self) -> None:
        self.jobs: set[str] = set()
        self.then: Callable[[], Any] | None = None

    async def list(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        listing = [{"Labels": {names.JOB_LABEL: job}} for job in sorted(self.jobs)]
        if self.then is not None:
            then, self.then = self.then, None
            await then()
        return listing


class FakeDocker:
    def __init__(self) -> None:
        self.networks = FakeNetworks()


@pytest.fixture
def firewall(monkeypatch: pytest.MonkeyPatch) -> FakeFirewall:
    fake = FakeFirewall()
    monkeypatch.setattr(egress, "_iptables", fake)
    return fake


async def add_job(docker: FakeDocker, job_id: str) -> None:
    """What a job's set-up does, in its order: the network first, then its rule."""
    docker.networks.jobs.add(job_id)
    await egress._firewall(job_id, ["-i", egress.bridge_name(job_id)], ipv6=False)


async def test_prune_removes_only_the_rules_of_jobs_whose_network_is_gone(
    firewall: FakeFirewall,
) -> None:
    docker = FakeDocker()
    await add_job(docker, "live")
    await add_job(docker, "gone")
    docker.networks.jobs.discard("gone")
    firewall.rules.append(["INPUT", "-s", "10.0.0.1/32", "-j", "ACCEPT"])  # not ours

    await egress.prune_firewall(docker)  # type: ignore[arg-type]

    assert firewall.deleted == ["dockguard-job:gone"]
    assert [r for r in firewall.rules if "--comment" in r] == [
        ["INPUT", "-i", egress.bridge_name("live"), "-m", "comment", "--comment",
         "dockguard-job:live", "-j", "DROP"]
    ]  # fmt: skip
    assert ["INPUT", "-s", "10.0.0.1/32", "-j", "ACCEPT"] in firewall.rules


async def test_prune_keeps_the_rule_of_a_job_set_up_while_it_runs(
    firewall: FakeFirewall,
) -> None:
    """Another job creates its network and its rule between prune's two reads. Listing the
    networks before the rules would see the rule and not the network, and remove the rule of a
    build that is running."""
    docker = FakeDocker()

    async def meanwhile() -> None:
        await add_job(docker, "new")

    docker.networks.then = meanwhile
    await egress.prune_firewall(docker)  # type: ignore[arg-type]
    assert firewall.deleted == []
    assert any("dockguard-job:new" in rule for rule in firewall.rules)


async def test_a_rule_another_cleanup_deleted_first_is_not_an_error(
    firewall: FakeFirewall, monkeypatch: pytest.MonkeyPatch
) -> None:
    docker = FakeDocker()
    await add_job(docker, "done")
    docker.networks.jobs.clear()
    listing = await egress._rules("iptables")
    firewall.rules.clear()  # another worker's prune won the race
    await egress._delete_rules("iptables", listing, lambda comment: True)
    assert firewall.deleted == []


async def test_a_rule_that_cannot_be_deleted_is_reported(
    firewall: FakeFirewall, monkeypatch: pytest.MonkeyPatch
) -> None:
    docker = FakeDocker()
    await add_job(docker, "stuck")

    async def refuses(tool: str, args: list[str]) -> str:
        if args[0] == "-D":
            raise egress.EgressUnavailable("iptables -D INPUT failed (4): resource busy")
        return await firewall(tool, args)

    monkeypatch.setattr(egress, "_iptables", refuses)
    with pytest.raises(egress.EgressUnavailable, match="resource busy"):
        await egress.remove_firewall("stuck")
