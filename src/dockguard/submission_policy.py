"""What a submitted Dockerfile may ask of the builder, checked before it becomes a job (HTTP 400
`dockerfile_forbidden`). Pure logic, no I/O: the parsed Dockerfile and the policy in, the first
violation in file order out, as "line N: <what> is not allowed (<why>)".

Why each rule exists — the build runs the submitter's instructions on our engine:
- Parser directives. `# syntax=<image>` makes BuildKit pull that image and run it as the
  frontend: arbitrary code, chosen by the submitter, in the builder. `# check=` reconfigures the
  build checks. Only `# escape=` is harmless. BuildKit looks for `syntax` and `check` even after a
  `#!` line, where the engine's parser no longer reads directives, so every comment before the
  first instruction is read for them.
- Remote `ADD`. An http(s) URL or a git repository is fetched by the builder itself: content
  that no scan has seen, from wherever the submitter likes, with the builder's network. A source
  holding a build argument could expand to a URL, so it is refused too.
- `RUN` flags. `--mount` reads secrets, SSH agents, caches shared between builds, or other
  images; `--network` and `--security` change the build's isolation. Every flag is refused.
- `ONBUILD`. It injects instructions into every build that uses this image as its base.
- Base images. A tag changes under you and any registry can serve one, so operators may allow
  only some images (glob patterns) and require a digest. `FROM --platform` means emulation and a
  different image than the reference names. `COPY --from=<image>` pulls an image like `FROM` does
  but is easy to miss, so it must name an earlier stage, or an allowed image when there is an
  allowlist. A build argument in either cannot be checked against an allowlist.
- Size. A cap on stages and instructions bounds the work one submission can ask for.

Flags are split as BuildKit splits them (`extractBuilderFlags`): leading `--name[=value]` words,
quotes and backslashes removed. References that must match an allowlist may hold only the
characters of a plain image reference: the engine would unquote and unescape anything else, so
`busybox:5000\\/evil` would match `busybox:*` as written and pull from another registry.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

from dockguard.dockerfile import Dockerfile, Instruction
from dockguard.errors import ErrorCode, SubmissionError
from dockguard.settings import Settings

_ENGINE_DIRECTIVES = frozenset({"syntax", "check"})  # read by BuildKit even after a `#!` line
_DIRECTIVE_LIKE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=")
_GO_SPACE = frozenset(" \t\n\v\f\r\x85\xa0")  # Go's unicode.IsSpace, which splits flags
_PLAIN_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
_SCP_LIKE_GIT = re.compile(r"^[\w.+-]+@[\w.-]+:")  # git@host:repo
_REMOTE_FETCH = (
    "the build must not fetch remote content; COPY local files or RUN a download instead"
)


@dataclass(frozen=True)
class SubmissionPolicy:
    """Safe by default: every switch off, any base image, 8 stages, 200 instructions."""

    allow_parser_directives: bool = False
    allow_remote_add: bool = False
    allow_run_flags: bool = False
    allow_onbuild: bool = False
    allowed_base_images: tuple[str, ...] = ()
    require_base_digest: bool = False
    max_stages: int = 8
    max_instructions: int = 200

    @classmethod
    def from_settings(cls, settings: Settings) -> SubmissionPolicy:
        return cls(
            allow_parser_directives=settings.allow_parser_directives,
            allow_remote_add=settings.allow_remote_add,
            allow_run_flags=settings.allow_run_flags,
            allow_onbuild=settings.allow_onbuild,
            allowed_base_images=tuple(settings.allowed_base_images),
            require_base_digest=settings.require_base_digest,
            max_stages=settings.max_stages,
            max_instructions=settings.max_instructions,
        )

    @property
    def checks_base_images(self) -> bool:
        return bool(self.allowed_base_images) or self.require_base_digest


def check(dockerfile: Dockerfile, policy: SubmissionPolicy) -> None:
    """Raise `dockerfile_forbidden` for the first violation in file order; return if none."""
    if not policy.allow_parser_directives:
        _check_directives(dockerfile)
    stages: list[str | None] = []  # each stage's name (lower-case, as the engine compares them)
    for count, instruction in enumerate(dockerfile.instructions, start=1):
        line, keyword = instruction.line, instruction.keyword
        if count > policy.max_instructions:
            raise _forbidden(
                line,
                f"more than {policy.max_instructions} instructions are not allowed "
                "(combine steps, e.g. several commands in one RUN)",
            )
        if keyword == "FROM":
            if len(stages) == policy.max_stages:
                raise _forbidden(
                    line,
                    f"more than {policy.max_stages} stages are not allowed "
                    f"(at most {policy.max_stages} FROM instructions)",
                )
            stages.append(_check_from(instruction, policy, stages))
        elif keyword == "ADD" and not policy.allow_remote_add:
            _check_add(instruction)
        elif keyword == "COPY":
            _check_copy(instruction, policy, stages)
        elif keyword == "RUN" and not policy.allow_run_flags:
            _check_run(instruction)
        elif keyword == "ONBUILD" and not policy.allow_onbuild:
            raise _forbidden(
                line,
                "ONBUILD is not allowed (it injects instructions into every build that uses "
                "this image as its base)",
            )


def _forbidden(line: int, message: str) -> SubmissionError:
    return SubmissionError(ErrorCode.DOCKERFILE_FORBIDDEN, f"line {line}: {message}")


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "…")


def _check_directives(dockerfile: Dockerfile) -> None:
    for number, comment in _leading_comments(dockerfile.text):
        match = _DIRECTIVE_LIKE.match(comment)
        if not match:
            continue
        key = match.group(1).lower()
        if key == "escape" or (key not in _ENGINE_DIRECTIVES and key not in dockerfile.directives):
            continue
        if key == "syntax":
            why = "it makes the builder pull and run the named frontend image: arbitrary code"
        elif key == "check":
            why = "build checks are configured by the service, not by the Dockerfile"
        else:
            why = "only '# escape=' is"
        raise _forbidden(number, f"the '# {key[:40]}=' parser directive is not allowed ({why})")


def _leading_comments(text: str) -> Iterator[tuple[int, str]]:
    """(line number, comment) for each comment before the first instruction. Lines end at `\\n`
    only, as in the engine's scanner."""
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            return
        if line:
            yield number, line


def _check_from(
    instruction: Instruction, policy: SubmissionPolicy, stages: list[str | None]
) -> str | None:
    """Raise for a forbidden FROM; return the stage's name, if it has one."""
    flags, rest = _split_flags(instruction.arguments)
    line = instruction.line
    if flags:
        raise _forbidden(
            line,
            f"FROM --{_flag_name(flags[0])} is not allowed (the build uses the engine's own "
            "platform; another one means emulation and a different image than the one named)",
        )
    words = rest.split()
    if not words:  # `FROM --`: the engine refuses it
        return None
    image = words[0]
    name = words[2].lower() if len(words) == 3 and words[1].lower() == "as" else None
    if image.lower() == "scratch" or image.lower() in stages:
        return name
    problem = _base_image_problem(image, policy)
    if problem:
        raise _forbidden(line, f"base image {_shown(image)} is not allowed ({problem})")
    return name


def _base_image_problem(image: str, policy: SubmissionPolicy) -> str | None:
    """Why `image`, as written, may not be pulled; None if it may."""
    if not policy.checks_base_images:
        return None
    what = "the allowed base images" if policy.allowed_base_images else "a pinned digest"
    if "$" in image:
        return (
            f"a build argument cannot be checked against {what}; write the image reference itself"
        )
    if not _PLAIN_REFERENCE.match(image):
        return f"quotes, escapes and other characters cannot be checked against {what}"
    if policy.allowed_base_images and not any(
        _glob_match(image, pattern) for pattern in policy.allowed_base_images
    ):
        return f"the allowed base images are: {_allowlist(policy)}"
    if policy.require_base_digest and not _DIGEST.search(image):
        return (
            "it must be pinned by digest, IMAGE@sha256:<64 hex digits>, so that it cannot "
            "change under you"
        )
    return None


def _glob_match(image: str, pattern: str) -> bool:
    """fnmatch, one `/`-separated part at a time: `busybox:*` must not match `busybox:5000/x`,
    an image on the registry at host `busybox`, port 5000."""
    parts, pattern_parts = image.split("/"), pattern.split("/")
    return len(parts) == len(pattern_parts) and all(
        fnmatch.fnmatchcase(part, glob) for part, glob in zip(parts, pattern_parts, strict=True)
    )


def _allowlist(policy: SubmissionPolicy) -> str:
    shown = ", ".join(policy.allowed_base_images[:5])
    return shown + (", …" if len(policy.allowed_base_images) > 5 else "")


def _check_copy(
    instruction: Instruction, policy: SubmissionPolicy, stages: list[str | None]
) -> None:
    flags, rest = _split_flags(instruction.arguments)
    current = len(stages) - 1
    earlier = {stage for stage in stages[:current] if stage}
    for flag in flags:
        name, has_value, value = flag.partition("=")
        if name != "from":
            continue
        if not has_value:  # `--from x`: the engine refuses it; check `x` all the same
            value = next(iter(rest.split()), "")
        if value.lower() in earlier or (value.isdigit() and int(value) < current):
            continue
        if "$" in value:
            why = "a build argument cannot be checked; name an earlier stage"
        elif policy.allowed_base_images:
            problem = _base_image_problem(value, policy)
            if problem is None:
                continue
            why = f"it is not an earlier stage; as an image, {problem}"
        else:
            why = (
                "it is not an earlier stage, and copying from an image pulls it: add a stage "
                "'FROM <image> AS <name>' and COPY --from=<name>"
            )
        raise _forbidden(instruction.line, f"COPY --from={_shown(value)} is not allowed ({why})")


def _check_add(instruction: Instruction) -> None:
    _, rest = _split_flags(instruction.arguments)
    words = _words(rest)
    for source in words[:-1] or words:
        plain = re.sub(r"[\"'\\`]", "", source)
        if "$" in plain:
            raise _forbidden(
                instruction.line,
                "ADD with a build argument or variable in its source is not allowed (it could "
                f"expand to a URL, and {_REMOTE_FETCH})",
            )
        if _is_git(plain):
            raise _forbidden(
                instruction.line, f"ADD from a git repository is not allowed ({_REMOTE_FETCH})"
            )
        if "://" in plain:
            raise _forbidden(instruction.line, f"ADD from a URL is not allowed ({_REMOTE_FETCH})")


def _is_git(source: str) -> bool:
    lowered = source.lower()
    if lowered.startswith(("git://", "ssh://", "git@")) or _SCP_LIKE_GIT.match(source):
        return True
    return "://" in lowered and lowered.split("#", 1)[0].endswith(".git")


def _words(rest: str) -> list[str]:
    """The engine's split of ADD/COPY arguments: a JSON array of strings, or whitespace."""
    if rest.startswith("["):
        try:
            parsed = json.loads(rest)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
            return parsed
    return rest.split()


def _check_run(instruction: Instruction) -> None:
    flags, _ = _split_flags(instruction.arguments)
    if flags:
        raise _forbidden(
            instruction.line,
            f"RUN --{_flag_name(flags[0])} is not allowed (RUN flags can mount secrets, SSH "
            "agents, caches shared between builds or other images, or change the build's "
            "network and security mode)",
        )


def _flag_name(flag: str) -> str:
    return flag.partition("=")[0][:40] or "?"


def _split_flags(arguments: str) -> tuple[list[str], str]:
    """BuildKit's `extractBuilderFlags`: the leading `--name[=value]` words, without their `--`,
    quotes or backslashes, and the rest of the arguments. A lone `--` ends the flags."""
    flags: list[str] = []
    word: list[str] = []
    in_word, quote = False, ""
    position, end = 0, len(arguments)
    while position < end:
        char = arguments[position]
        if not in_word:
            if char in _GO_SPACE:
                position += 1
                continue
            if not arguments.startswith("--", position):
                return flags, arguments[position:]
            in_word = True
        if quote:
            if char == quote:
                quote = ""
            elif char == "\\" and position + 1 < end:
                position += 1
                word.append(arguments[position])
            elif char != "\\":
                word.append(char)
        elif char in _GO_SPACE:
            text = "".join(word)
            if text == "--":
                return flags, arguments[position:]
            flags.append(text[2:])
            word, in_word = [], False
        elif char in "'\"":
            quote = char
        elif char == "\\":
            if position + 1 < end:
                position += 1
                word.append(arguments[position])
        else:
            word.append(char)
        position += 1
    text = "".join(word)
    if in_word and text != "--":
        flags.append(text[2:])
    return flags, ""
