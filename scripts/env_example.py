"""Write `.env.example`: every setting with its default (tests/unit/test_env_example.py checks it
is complete and that pydantic-settings reads it back as the defaults).

    .venv/bin/python scripts/env_example.py > .env.example
"""

from __future__ import annotations

from enum import Enum

from pydantic_core import PydanticUndefined

from dockguard.settings import Settings

HEADER = """\
# Every dockguard setting, with its default (the README's "Configuration" says what each does).
# Copy to .env (read from the working directory) or set as environment variables, and change
# what you need. Lists are comma-separated. Settings that are unset by default are commented out.
"""


def env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list):
        return ",".join(env_value(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def lines() -> list[str]:
    out = [HEADER]
    for name, field in Settings.model_fields.items():
        default = field.default
        if default is PydanticUndefined and field.default_factory is not None:
            default = field.default_factory()  # type: ignore[call-arg]
        variable = f"DOCKGUARD_{name.upper()}"
        out.append(f"# {variable}=" if default is None else f"{variable}={env_value(default)}")
    return out


if __name__ == "__main__":
    print("\n".join(lines()))
