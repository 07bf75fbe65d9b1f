"""Which images a build will start from, resolved before it runs, as the engine will resolve them.

The classic builder pulls a `FROM` (or `COPY --from`) image that is not on the engine, even with
`pull=0`, from wherever the reference points — `FROM 127.0.0.1:5000/x` makes dockerd connect to
that address from the host's network namespace. So every such image is resolved here first
(meta `ARG` defaults substituted the engine's way; build arguments are never passed) and the
worker requires it to be on the engine already, unless the operator allows pulling it
(`DOCKGUARD_BUILD_PULL_ALLOW`), in which case dockguard pulls it itself before the build.

Only what can be resolved with certainty is accepted: plain references, with `$NAME` or
`${NAME}` naming a meta `ARG` whose default is itself plain. Quotes, escapes, `${NAME:-…}` forms
and undeclared arguments are refused at submission (`dockerfile_forbidden`): another reading than
the engine's would check one image and build from another."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from dockguard.dockerfile import Dockerfile, Instruction
from dockguard.errors import ErrorCode, SubmissionError

PLAIN_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*\Z")
_PLAIN_VALUE = re.compile(r"^[A-Za-z0-9._:/@-]*\Z")
_ARG = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?\Z", re.DOTALL)
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
SCRATCH = "scratch"
# The engine's builtinAllowedBuildArgs: a build argument passed for one of these (the egress
# proxy ones are) overrides an ARG default of the same name, even before the first FROM.
BUILTIN_ARGS = frozenset(
    name
    for upper in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
    for name in (upper, upper.lower())
)


@dataclass(frozen=True)
class BaseImage:
    """An image the build needs from the engine: its reference and where the Dockerfile asks."""

    reference: str
    line: int


def _forbidden(line: int, message: str) -> SubmissionError:
    return SubmissionError(ErrorCode.DOCKERFILE_FORBIDDEN, f"line {line}: {message}")


def resolve(dockerfile: Dockerfile) -> tuple[BaseImage, ...]:
    """Every image a `FROM` or `COPY --from` pulls in, in file order, without duplicates; raises
    `dockerfile_forbidden` for one that cannot be resolved with certainty."""
    meta: dict[str, str | None] = {}  # meta ARGs: name → plain default (None: not plain)
    stages: list[str] = []
    found: dict[str, BaseImage] = {}
    for instruction in dockerfile.instructions:
        if instruction.keyword == "ARG" and not stages:
            _meta_arg(instruction, meta)
        elif instruction.keyword == "FROM":
            image, name = _from(instruction, meta)
            if image != SCRATCH and image.lower() not in stages:
                found.setdefault(image, BaseImage(image, instruction.line))
            stages.append(name or f"#{len(stages)}")
        elif instruction.keyword == "COPY":
            source = _copy_from(instruction, stages)
            if source is not None:
                found.setdefault(source, BaseImage(source, instruction.line))
    return tuple(found.values())


def _meta_arg(instruction: Instruction, meta: dict[str, str | None]) -> None:
    match = _ARG.match(instruction.arguments)
    if not match:
        return  # the engine refuses it, or no FROM can name it
    value = match.group(2)
    plain = value is None or _PLAIN_VALUE.match(value)
    meta[match.group(1)] = (value or "") if plain else None


def _from(instruction: Instruction, meta: dict[str, str | None]) -> tuple[str, str | None]:
    words = instruction.arguments.split()
    name = stage_name(words)
    written = words[0]
    image = _substitute(written, meta, instruction.line)
    if not image or not PLAIN_REFERENCE.match(image):
        raise _forbidden(
            instruction.line,
            f"base image {_shown(written)} cannot be resolved before the build (write a plain "
            "image reference; quotes, escapes and ${…} forms are not allowed)",
        )
    return image, name


def _substitute(word: str, meta: dict[str, str | None], line: int) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in BUILTIN_ARGS:
            raise _forbidden(
                line,
                f"${name} is one of the engine's predefined build arguments (the worker may "
                "pass it, overriding any default), so it cannot name a base image",
            )
        if name not in meta:
            raise _forbidden(
                line, f"${name} is not an ARG declared before the first FROM, with a default"
            )
        resolved = meta[name]
        if resolved is None:
            raise _forbidden(line, f"the default of ARG {name} is not a plain image reference")
        return resolved

    substituted = _VARIABLE.sub(value, word)
    if "$" in substituted:
        raise _forbidden(line, f"base image {_shown(word)} uses a form of $ that is not allowed")
    return substituted


def _copy_from(instruction: Instruction, stages: list[str]) -> str | None:
    """The image a `COPY --from` names, or None when it names an earlier stage."""
    for flag in instruction.flags:
        name, has_value, value = flag[2:].partition("=")
        if name != "from":
            continue
        if not has_value:
            value = next(iter(instruction.arguments.split()), "")
        if value.lower() in stages[:-1] or (
            value.isascii() and value.isdigit() and int(value) < len(stages) - 1
        ):
            return None
        if not PLAIN_REFERENCE.match(value):
            raise _forbidden(
                instruction.line, f"COPY --from={_shown(value)} cannot be resolved before the build"
            )
        return value
    return None


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "…")


def stage_name(words: list[str]) -> str | None:
    """The stage a `FROM image AS name` names, lower-case, as the engine compares them (its
    EqualFold accepts a long s, U+017F, in `as`)."""
    return words[2].lower() if len(words) == 3 and words[1].casefold() == "as" else None


def matches_any(reference: str, patterns: tuple[str, ...]) -> bool:
    """fnmatch one `/`-separated part at a time, with as many parts: `busybox:*` must not match
    `busybox:5000/x`, an image on the registry at host `busybox`, port 5000. (The submission
    policy's allowlist and DOCKGUARD_BUILD_PULL_ALLOW.)"""
    parts = reference.split("/")
    for pattern in patterns:
        globs = pattern.split("/")
        if len(globs) == len(parts) and all(
            fnmatch.fnmatchcase(part, glob) for part, glob in zip(parts, globs, strict=True)
        ):
            return True
    return False
