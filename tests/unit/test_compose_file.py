"""compose.yaml as a file (tests/e2e/test_compose.py brings it up, and checks it against the
Compose Specification's schema): what it must get right, read back from it. Redis durable and
never evicting, every service limited, healthy-gated and without privileges, the API on loopback
only, Redis reachable only from the API and the workers, every DOCKGUARD_ name a real setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dockguard.jobs.worker import _DRAIN_TIMEOUT_S
from dockguard.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def test_redis_is_durable_and_never_evicts(services: dict[str, dict[str, Any]]) -> None:
    command = services["redis"]["command"]
    pairs = dict(zip(command[1::2], command[2::2], strict=False))
    assert pairs["--appendonly"] == "yes"
    assert pairs["--appendfsync"] == "everysec"
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert any(volume.endswith(":/data") for volume in services["redis"]["volumes"])


def test_a_second_redis_for_dockerfiles_is_a_profile(services: dict[str, dict[str, Any]]) -> None:
    assert services["redis-dockerfiles"]["profiles"] == ["dockerfile-store"]
    assert "profiles" not in services["api"] and "profiles" not in services["worker"]


@pytest.mark.parametrize("name", ["redis", "redis-dockerfiles", "api", "worker"])
def test_every_service_is_limited_and_unprivileged(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    service = services[name]
    assert service["mem_limit"] and service["cpus"] > 0 and service["pids_limit"] > 0
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert "privileged" not in service
    assert service["healthcheck"]["test"]
    assert service["restart"] == "unless-stopped"


def test_only_the_worker_gets_root_and_one_capability(services: dict[str, dict[str, Any]]) -> None:
    """The worker writes the build's pids cgroup (root) and the DB volume (DAC_OVERRIDE)."""
    for name, service in services.items():
        if name == "worker":
            assert service["user"] == "0:0"
            assert service["cap_add"] == ["DAC_OVERRIDE"]
        else:
            assert "cap_add" not in service, name
            assert service.get("user") in (None, "10001:10001"), name


def test_started_only_once_redis_is_healthy(services: dict[str, dict[str, Any]]) -> None:
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}


def test_the_api_listens_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    ports = services["api"]["ports"]
    assert ports and all(port.startswith("127.0.0.1:") for port in ports)
    for name, service in services.items():
        if name != "api":
            assert "ports" not in service, name


def test_redis_is_reachable_only_by_the_api_and_the_workers(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert compose["networks"]["backend"]["internal"] is True
    for name in ("redis", "redis-dockerfiles"):
        assert services[name]["networks"] == ["backend"]
    on_backend = {name for name, s in services.items() if "backend" in s.get("networks", [])}
    assert on_backend == {"redis", "redis-dockerfiles", "api", "worker"}


def test_the_socket_mount_says_what_it_risks() -> None:
    """Every mount of the engine's socket comes after the comment that says what it gives away."""
    text = COMPOSE.read_text()
    first_mount = text.index("/var/run/docker.sock:/var/run/docker.sock")
    assert "root-equivalent" in text[:first_mount]
    assert "`:ro`" in text[:first_mount]  # and why a read-only mount does not help


def test_only_the_workers_hold_the_engine_socket(services: dict[str, dict[str, Any]]) -> None:
    """The API parses clients' requests: it gets no socket (root on the engine host) and no
    docker group, and its /readyz leaves the engine check out instead of failing it."""
    socket = "/var/run/docker.sock:/var/run/docker.sock"
    holders = {name for name, s in services.items() if socket in s.get("volumes", [])}
    assert holders == {"worker"}
    assert services["api"]["group_add"] == []
    assert services["api"]["environment"]["DOCKGUARD_READYZ_EXCLUDE"] == "docker"
    assert services["api"]["environment"]["DOCKGUARD_REDIS_URL"] == "redis://redis:6379/0"


def test_the_workers_drain_within_the_grace(services: dict[str, dict[str, Any]]) -> None:
    """Compose waits stop_grace_period before SIGKILL: a worker's grace for its running jobs,
    then its drain, must fit in it; the API's grace too."""

    def seconds(value: str) -> int:
        assert value.endswith("s")
        return int(value[:-1])

    defaults = Settings()
    worker_needs = defaults.worker_shutdown_grace_s + _DRAIN_TIMEOUT_S
    assert seconds(services["worker"]["stop_grace_period"]) >= worker_needs
    assert seconds(services["api"]["stop_grace_period"]) > defaults.api_shutdown_grace_s


def test_every_setting_named_is_a_real_setting(services: dict[str, dict[str, Any]]) -> None:
    known = {f"DOCKGUARD_{name.upper()}" for name in Settings.model_fields}
    for name, service in services.items():
        for variable in service.get("environment") or {}:
            if variable.startswith("DOCKGUARD_"):
                assert variable in known, f"{name}: {variable} is not a dockguard setting"
