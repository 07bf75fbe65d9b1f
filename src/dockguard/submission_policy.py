"""What a submitted Dockerfile may ask of the builder, checked before it becomes a job (HTTP 400
`dockerfile_forbidden`). Pure logic, no I/O: the parsed Dockerfile and the policy in, the first
violation in file order out, as "line N: <what> is not allowed (<why>)".

Why each rule exists — the build runs the submitter's instructions on our engine:
- Parser directives. `# syntax=<image>` makes BuildKit pull that image and run it as the
  frontend: arbitrary code, chosen by the submitter, in the builder. `# check=` reconfigures the
  build checks. Only `# escape=` is harmless. BuildKit looks for `syntax` and `check` even after a
  `#!` line, where the engine's parser no longer reads directives, so every comment before the
  first instruction is read for them; a directive-like comment where the engine's parser stops
  looking (`# frob=1` right after `# escape=`) is refused too, as another builder may read it.
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

Flags are the parser's (dockerfile.py, a port of the engine's `extractBuilderFlags`): leading
`--name[=value]` words, quotes and backslashes removed. References that must match an allowlist
may hold only the characters of a plain image reference: the engine would unquote and unescape
anything else, so `busybox:5000\\/evil` would match `busybox:*` as written and pull from
another registry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from dockguard import base_images
from dockguard.dockerfile import GO_SPACE, Dockerfile, Instruction
from dockguard.errors import ErrorCode, SubmissionError
from dockguard.sandbox import names
from dockguard.settings import Settings

_ENGINE_DIRECTIVES = frozenset({"syntax", "check"})  # read by BuildKit even after a `#!` line
_DIRECTIVE_LIKE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=")
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
        elif keyword == "LABEL":
            _check_label(instruction, dockerfile.directives.get("escape", "\\"))
    base_images.resolve(dockerfile)  # every FROM / COPY --from image must be resolvable


def _forbidden(line: int, message: str) -> SubmissionError:
    return SubmissionError(ErrorCode.DOCKERFILE_FORBIDDEN, f"line {line}: {message}")


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "…")


def _check_directives(dockerfile: Dockerfile) -> None:
    for number, comment in dockerfile.leading_comments:
        match = _DIRECTIVE_LIKE.match(comment)
        if not match:
            continue
        key = match.group(1).lower()
        # A directive-like comment where the engine stops looking for directives is refused:
        # another builder version may read it as one.
        if key == "escape" or (
            key not in _ENGINE_DIRECTIVES
            and key not in dockerfile.directives
            and number != dockerfile.directives_end
        ):
            continue
        if key == "syntax":
            why = "it makes the builder pull and run the named frontend image: arbitrary code"
        elif key == "check":
            why = "build checks are configured by the service, not by the Dockerfile"
        else:
            why = "only '# escape=' is"
        raise _forbidden(number, f"the '# {key[:40]}=' parser directive is not allowed ({why})")


def _check_from(
    instruction: Instruction, policy: SubmissionPolicy, stages: list[str | None]
) -> str | None:
    """Raise for a forbidden FROM; return the stage's name, if it has one."""
    flags, rest = _flags(instruction), instruction.arguments
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
    name = base_images.stage_name(words)
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
    if not base_images.PLAIN_REFERENCE.match(image):
        return f"quotes, escapes and other characters cannot be checked against {what}"
    if policy.allowed_base_images and not base_images.matches_any(
        image, policy.allowed_base_images
    ):
        return f"the allowed base images are: {_allowlist(policy)}"
    if policy.require_base_digest and not _DIGEST.search(image):
        return (
            "it must be pinned by digest, IMAGE@sha256:<64 hex digits>, so that it cannot "
            "change under you"
        )
    return None


def _allowlist(policy: SubmissionPolicy) -> str:
    shown = ", ".join(policy.allowed_base_images[:5])
    return shown + (", …" if len(policy.allowed_base_images) > 5 else "")


def _check_copy(
    instruction: Instruction, policy: SubmissionPolicy, stages: list[str | None]
) -> None:
    flags, rest = _flags(instruction), instruction.arguments
    current = len(stages) - 1
    earlier = {stage for stage in stages[:current] if stage}
    for flag in flags:
        name, has_value, value = flag.partition("=")
        if name != "from":
            continue
        if not has_value:  # `--from x`: the engine refuses it; check `x` all the same
            value = next(iter(rest.split()), "")
        if value.lower() in earlier or (
            value.isascii() and value.isdigit() and int(value) < current
        ):
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
    # Sources under both readings: the engine's (a JSON array's first value, or words), and
    # plain words, so that a reading this check got wrong can only refuse more.
    for source in _sources(instruction.arguments):
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


def _sources(rest: str) -> list[str]:
    sources: list[str] = []
    for words in (_json_words(rest), rest.split()):
        if words:
            sources += words[:-1] or words  # the last is the destination
    return sources


def _is_git(source: str) -> bool:
    lowered = source.lower()
    if lowered.startswith(("git://", "ssh://", "git@")) or _SCP_LIKE_GIT.match(source):
        return True
    return "://" in lowered and lowered.split("#", 1)[0].endswith(".git")


def _json_words(rest: str) -> list[str] | None:
    """The engine's `parseJSON`: Go's json.Decoder reads the first value and ignores what
    follows it, so `["http://x", "/x"] junk` is that array."""
    if not rest.startswith("["):
        return None
    try:
        parsed, _ = json.JSONDecoder().raw_decode(rest)
    except ValueError:
        return None
    if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
        return parsed
    return None


def _check_label(instruction: Instruction, escape: str) -> None:
    """dockguard finds and removes a job's objects by its labels: a Dockerfile may not set a
    label in that namespace, nor a key that a variable could turn into one."""
    for key in _label_keys(instruction.arguments, escape):
        plain = re.sub(r"[\"'\\`]", "", key)
        if "$" in plain:
            raise _forbidden(
                instruction.line, "LABEL keys may not hold a variable (write the key itself)"
            )
        if plain.lower().startswith(names.LABEL_NAMESPACE):
            raise _forbidden(
                instruction.line,
                f"LABEL keys starting with {names.LABEL_NAMESPACE!r} are not allowed (that "
                "namespace is dockguard's own, used to find and remove each job's objects)",
            )


def _label_keys(arguments: str, escape: str) -> list[str]:
    """The keys of `LABEL k=v k2="v 2"`, or of the older `LABEL key value` form, as the
    engine's `parseNameVal` finds them (its words, or its first whitespace-separated part)."""
    words = _parse_words(arguments, escape)
    if words and "=" not in words[0]:
        return re.split(r"[\t\v\f\r ]+", arguments, maxsplit=1)[:1]
    return [word.partition("=")[0] for word in words]


def _parse_words(text: str, escape: str) -> list[str]:
    """The engine's `parseWords`: words split at unquoted whitespace (Go's unicode.IsSpace),
    quotes and escapes kept; only the Dockerfile's escape character escapes, and not inside
    single quotes."""
    words: list[str] = []
    word, quote, in_word, blank_ok = "", "", False, False
    index, end = 0, len(text)
    while index < end:
        char = text[index]
        if not in_word and not quote:
            if char in GO_SPACE:
                index += 1
                continue
            in_word = True
        if quote:
            if char == quote:
                quote, in_word = "", True
            elif char == escape and quote != "'":
                if index + 1 == end:
                    quote, in_word = "", True
                    index += 1
                    continue
                word += char
                index += 1
                char = text[index]
            word += char
        elif char in GO_SPACE:
            if blank_ok or word:
                words.append(word)
            word, blank_ok, in_word = "", False, False
        else:
            if char in "'\"":
                quote, blank_ok = char, True
            if char == escape:
                if index + 1 == end:
                    index += 1
                    continue
                word += char
                index += 1
                char = text[index]
            word += char
        index += 1
    if (in_word or quote) and (blank_ok or word):
        words.append(word)
    return words


def _check_run(instruction: Instruction) -> None:
    flags = _flags(instruction)
    if flags:
        raise _forbidden(
            instruction.line,
            f"RUN --{_flag_name(flags[0])} is not allowed (RUN flags can mount secrets, SSH "
            "agents, caches shared between builds or other images, or change the build's "
            "network and security mode)",
        )


def _flag_name(flag: str) -> str:
    return flag.partition("=")[0][:40] or "?"


def _flags(instruction: Instruction) -> list[str]:
    """The instruction's flags without their `--`, as BuildKit's BFlags reads them."""
    return [flag[2:] for flag in instruction.flags]
