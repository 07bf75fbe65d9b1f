"""Settings validation that must hold before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from dockguard.settings import EXAMPLE_SECRETS, EXAMPLE_SECRETS_FILE, Settings

EXAMPLE_KEY = "RVhBTVBMRS1PTkxZLW5vdC1hLXNlY3JldC1rZXkhISE="

KEY_A = Fernet.generate_key().decode()


def test_invalid_keys_stop_the_start_without_showing_a_key() -> None:
    with pytest.raises(ValidationError) as invalid:
        Settings(encryption_key=f"{KEY_A},not-a-fernet-key")
    assert "key 2 of 2 is not a Fernet key" in str(invalid.value)
    assert KEY_A not in str(invalid.value) and "not-a-fernet-key" not in str(invalid.value)
    assert KEY_A not in repr(Settings(encryption_key=KEY_A))
    assert Settings(encryption_key=" ").encryption_key is None


@pytest.mark.parametrize(
    ("values", "named"),
    [
        (
            {"encryption_key": f"{Fernet.generate_key().decode()},{EXAMPLE_KEY}"},
            "DOCKGUARD_ENCRYPTION_KEY",
        ),
        ({"callback_secret": "example-callback-secret"}, "DOCKGUARD_CALLBACK_SECRET"),
        (
            {"redis_url": "redis://:example-redis-password@redis:6379/0"},
            "DOCKGUARD_REDIS_URL (its password)",
        ),
        (
            {"dockerfile_redis_url": "redis://:example-redis-password@r2:6379/0"},
            "DOCKGUARD_DOCKERFILE_REDIS_URL (its password)",
        ),
    ],
)
def test_the_repositorys_example_secrets_are_refused(values: dict[str, str], named: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(**values)  # type: ignore[arg-type]
    message = str(raised.value)
    assert f"{named}: the example value of {EXAMPLE_SECRETS_FILE}" in message
    assert EXAMPLE_KEY not in message and "example-redis-password" not in message


def test_the_example_secrets_file_holds_exactly_the_refused_values() -> None:
    """The refusal keeps up with the file: every value in it is one Settings refuses."""
    text = (Path(__file__).parents[2] / EXAMPLE_SECRETS_FILE).read_text()
    lines = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert lines["DOCKGUARD_ENCRYPTION_KEY"] in EXAMPLE_SECRETS["DOCKGUARD_ENCRYPTION_KEY"]
    assert lines["DOCKGUARD_CALLBACK_SECRET"] in EXAMPLE_SECRETS["DOCKGUARD_CALLBACK_SECRET"]
    with pytest.raises(ValidationError):
        Settings(redis_url=lines["DOCKGUARD_REDIS_URL"])


def test_the_cli_names_what_a_check_of_several_settings_refused() -> None:
    from typer.testing import CliRunner

    from dockguard.cli import app

    result = CliRunner().invoke(
        app, ["worker"], env={"DOCKGUARD_CALLBACK_SECRET": "example-callback-secret"}
    )
    assert result.exit_code == 2, result.output
    assert (
        "dockguard: invalid configuration: DOCKGUARD_CALLBACK_SECRET: the example value of "
        in result.output
    )
