"""`multipart/form-data` submissions (`curl -F dockerfile=@Dockerfile`), parsed by python-multipart
as the body streams in: nothing but the one `dockerfile` part (and the optional run-limit fields,
a few bytes each, and `callback_url`) is kept, and that part is refused
(413) as soon as it passes the Dockerfile limit, the whole body as soon as it passes the limit
plus `FRAMING_BYTES`, before the rest of it has been read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from dockguard import callbacks
from dockguard.errors import ErrorCode, SubmissionError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FIELD = "dockerfile"
LIMIT_FIELDS = ("run_timeout_s", "run_memory_mb", "run_cpus")  # models.RequestedLimits
CALLBACK_FIELD = "callback_url"
# The small fields beside the Dockerfile, and the most bytes each may hold.
_FIELD_BYTES = {**dict.fromkeys(LIMIT_FIELDS, 32), CALLBACK_FIELD: callbacks.MAX_URL_CHARS}
FRAMING_BYTES = 16 * 1024  # boundaries and part headers; python-multipart caps each header line
_IDENTITY_ENCODINGS = frozenset({b"", b"7bit", b"8bit", b"binary"})


def _invalid(why: str) -> SubmissionError:
    return SubmissionError(
        ErrorCode.REQUEST_INVALID,
        f"{why}; send one form field, `{FIELD}`, holding the Dockerfile, and optionally "
        f"{', '.join(f'`{name}`' for name in (*LIMIT_FIELDS, CALLBACK_FIELD))}",
    )


def _too_large(what: str, limit: int) -> SubmissionError:
    return SubmissionError(
        ErrorCode.DOCKERFILE_TOO_LARGE, f"{what} is larger than the {limit}-byte limit", 413
    )


@dataclass(frozen=True)
class Form:
    dockerfile: bytes
    limits: dict[str, str]  # the run-limit fields sent, as text (checked by the caller)
    callback_url: str | None = None


class _Form:
    """python-multipart's callbacks: keep the `dockerfile` part and the small fields (run
    limits, callback URL), refuse anything else."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dockerfile: bytearray | None = None
        self.fields: dict[str, bytearray] = {}
        self._small: bytearray | None = None
        self._small_cap = 0
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._in_dockerfile = False

    def on_part_begin(self) -> None:
        self._headers = {}
        self._in_dockerfile = False
        self._small = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._field).strip().lower()] = bytes(self._value).strip()
        self._field.clear()
        self._value.clear()

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise _invalid("a part has no Content-Disposition: form-data with a name")
        field = name.decode("latin-1")
        if field in _FIELD_BYTES:
            if field in self.fields:
                raise _invalid(f"more than one `{field}` field")
            self._small = self.fields[field] = bytearray()
            self._small_cap = _FIELD_BYTES[field]
            return
        if field != FIELD:
            raise _invalid(f"unexpected form field {field[:64]!r}")
        if self.dockerfile is not None:
            raise _invalid(f"more than one `{FIELD}` field")
        encoding = self._headers.get(b"content-transfer-encoding", b"").lower()
        if encoding not in _IDENTITY_ENCODINGS:
            raise _invalid(f"Content-Transfer-Encoding {encoding.decode('latin-1')[:32]!r}")
        self.dockerfile = bytearray()
        self._in_dockerfile = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._small is not None:
            if len(self._small) + (end - start) > self._small_cap:
                raise _invalid(f"a field is longer than its {self._small_cap}-byte limit")
            self._small += data[start:end]
        if self._in_dockerfile and self.dockerfile is not None:
            if len(self.dockerfile) + (end - start) > self.limit:
                raise _too_large("the Dockerfile", self.limit)
            self.dockerfile += data[start:end]

    def on_end(self) -> None:
        self.ended = True


async def read_dockerfile(request: Request, limit: int) -> bytes:
    """The `dockerfile` field's bytes (see `read_form`)."""
    return (await read_form(request, limit)).dockerfile


async def read_form(request: Request, limit: int) -> Form:
    """The `dockerfile` field's bytes and the small fields, read while the body streams in,
    never more than `limit` of the Dockerfile nor `limit` + FRAMING_BYTES of the body."""
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not boundary:
        raise _invalid("the multipart/form-data Content-Type has no boundary")
    body_limit = limit + FRAMING_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:
        raise _too_large("the request body", body_limit)
    form = _Form(limit)
    try:
        parser = MultipartParser(boundary, _callbacks(form))
    except FormParserError:
        raise _invalid("the multipart boundary is too long") from None
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > body_limit:
            raise _too_large("the request body", body_limit)
        try:
            parser.write(chunk)
        except FormParserError:
            raise _invalid("the body is not valid multipart/form-data") from None
    if not form.ended:
        raise _invalid("the multipart body ends before its closing boundary")
    if form.dockerfile is None:
        raise _invalid(f"no `{FIELD}` field")
    try:
        fields = {name: value.decode("ascii").strip() for name, value in form.fields.items()}
    except UnicodeDecodeError:
        raise _invalid("a field beside the Dockerfile is not ASCII") from None
    callback_url = fields.pop(CALLBACK_FIELD, None)
    return Form(bytes(form.dockerfile), fields, callback_url)


def _callbacks(form: _Form) -> MultipartCallbacks:
    return {
        "on_part_begin": form.on_part_begin,
        "on_header_field": form.on_header_field,
        "on_header_value": form.on_header_value,
        "on_header_end": form.on_header_end,
        "on_headers_finished": form.on_headers_finished,
        "on_part_data": form.on_part_data,
        "on_end": form.on_end,
    }
