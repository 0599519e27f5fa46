"""Upload limits: refuse an over-large body before reading it, cap every file read.

``UploadLimitMiddleware`` answers 413 from the ``Content-Length`` header alone, before any of
the body is read, and counts the bytes of bodies sent without one (chunked), failing as soon
as they pass the limit. Routes then read each uploaded file with ``read_upload``, which stops
one chunk past ``max_upload_bytes``.
"""

from __future__ import annotations

import base64
import binascii

from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catalens.api.errors import error_response, invalid_field
from catalens.errors import ImageDecodeError, ImageTooLargeError

__all__ = [
    "BodyTooLargeError",
    "UploadLimitMiddleware",
    "body_limit",
    "decode_base64_image",
    "one_file_per_field",
    "read_upload",
    "read_upload_sync",
]

OVERHEAD = 64 * 1024
"""Room for multipart boundaries, headers and the other (small) fields of a request."""
CHUNK = 1024 * 1024


def body_limit(content_type: str, max_upload_bytes: int) -> int:
    """The largest request body accepted for a content type."""
    if content_type.lower().startswith("multipart/"):
        return max_upload_bytes + OVERHEAD
    # A JSON body carries its image as base64: four characters for every three bytes.
    return max_upload_bytes * 4 // 3 + OVERHEAD


class BodyTooLargeError(HTTPException):
    """Raised from ``receive`` when a body without a usable Content-Length grows too large.

    An ``HTTPException`` so that FastAPI's body parsing lets it through unchanged.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the limit of {limit} bytes")
        self.limit = limit


def _too_large(declared: int, limit: int, max_upload_bytes: int) -> str:
    return (
        f"request body of {declared} bytes is over the limit of {limit} bytes "
        f"(uploads may be {max_upload_bytes} bytes: CATALENS_MAX_UPLOAD_BYTES)"
    )


class UploadLimitMiddleware:
    """413 for request bodies over ``body_limit``; nothing of such a body is buffered."""

    def __init__(self, app: ASGIApp, *, max_upload_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = body_limit(headers.get("content-type", ""), self.max_upload_bytes)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            # The server discards the unread body after the response, keeping the connection.
            detail = _too_large(int(declared), limit, self.max_upload_bytes)
            await error_response(413, "upload_too_large", detail)(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError as exc:
            if started:
                raise
            detail = str(exc.detail)
            await error_response(413, "upload_too_large", detail)(scope, receive, send)


async def one_file_per_field(request: Request) -> None:
    """Dependency of routes that take an uploaded file: 422 when a form field holds several
    files, where the route would silently use one of them."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return
    form = await request.form()  # parsed already for the route's parameters: cached
    for key in set(form.keys()):
        if sum(isinstance(value, UploadFile) for value in form.getlist(key)) > 1:
            raise invalid_field(key, "give one file, not several")


def _over(name: str, size: int | str, limit: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        name, f"{size} bytes is over the upload limit of {limit} bytes (CATALENS_MAX_UPLOAD_BYTES)"
    )


def _name(upload: UploadFile) -> str:
    return f"upload {upload.filename!r}" if upload.filename else "upload"


async def read_upload(upload: UploadFile, *, limit: int) -> bytes:
    """The bytes of an uploaded file; ``ImageTooLargeError`` (413) past ``limit``."""
    if upload.size is not None and upload.size > limit:
        raise _over(_name(upload), upload.size, limit)
    chunks: list[bytes] = []
    total = 0
    while chunk := await upload.read(CHUNK):
        total += len(chunk)
        if total > limit:
            raise _over(_name(upload), f"more than {limit}", limit)
        chunks.append(chunk)
    return b"".join(chunks)


def read_upload_sync(upload: UploadFile, *, limit: int) -> bytes:
    """``read_upload`` for ``def`` routes (run in the threadpool)."""
    if upload.size is not None and upload.size > limit:
        raise _over(_name(upload), upload.size, limit)
    upload.file.seek(0)
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise _over(_name(upload), f"more than {limit}", limit)
    return bytes(data)


def decode_base64_image(value: str, *, limit: int) -> bytes:
    """An image sent as base64 text (optionally a ``data:`` URL) as bytes."""
    text = value.strip()
    if text.startswith("data:"):
        _, sep, text = text.partition(",")
        if not sep:
            raise ImageDecodeError("image_base64", "a data: URL without a comma")
    if len(text) * 3 // 4 > limit + 3:
        raise _over("image_base64", len(text) * 3 // 4, limit)
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError("image_base64", f"not valid base64 ({exc})") from None
    if len(data) > limit:
        raise _over("image_base64", len(data), limit)
    return data
