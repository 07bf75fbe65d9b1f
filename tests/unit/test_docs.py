"""Documentation that must not drift from the code (after datasette's settings test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockguard.errors import ErrorCode
from dockguard.settings import Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented(name: str) -> None:
    assert f"DOCKGUARD_{name.upper()}" in README


@pytest.mark.parametrize("code", [code.value for code in ErrorCode])
def test_every_error_code_is_documented(code: str) -> None:
    assert f"`{code}`" in README
