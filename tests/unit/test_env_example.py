"""`.env.example` lists every setting (a new setting fails here until it is added:
`.venv/bin/python scripts/env_example.py > .env.example`), and pydantic-settings reads it back
as exactly the defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dockguard.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
_LINE = re.compile(r"(?:# )?(DOCKGUARD_[A-Z0-9_]+)=(.*)")


def _listed() -> dict[str, str]:
    found = {}
    for line in EXAMPLE.read_text().splitlines():
        if match := _LINE.fullmatch(line):
            found[match[1]] = match[2]
    return found


def test_every_setting_is_listed_once_and_nothing_else() -> None:
    expected = {f"DOCKGUARD_{name.upper()}" for name in Settings.model_fields}
    names = [m[1] for line in EXAMPLE.read_text().splitlines() if (m := _LINE.fullmatch(line))]
    assert len(names) == len(set(names)), "a setting is listed twice"
    assert set(names) == expected, {
        "missing": sorted(expected - set(names)),
        "unknown": sorted(set(names) - expected),
    }


def test_read_back_it_gives_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:  # only the file speaks
        monkeypatch.delenv(f"DOCKGUARD_{name.upper()}", raising=False)
    from_file = Settings(_env_file=EXAMPLE)
    defaults = Settings(_env_file=None)
    assert from_file.model_dump() == defaults.model_dump()


def test_it_is_what_the_generator_writes() -> None:
    from scripts.env_example import lines

    assert EXAMPLE.read_text() == "\n".join(lines()) + "\n"
