"""Reading an upload from the ASGI stream: counted as the bytes arrive (413 past the limit, whatever
the body's shape) and timed (408 when the client sends less than it declared, or too slowly)."""
from __future__ import annotations

import asyncio
import time

from starlette.requests import Request

from paddle_lane.serve.frames import IMAGE_TYPES, BadInput

MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and headers allowed on top of the image limit


async def read_body(request: Request, limit: int, deadline: float) -> bytes:
    """The raw body, counted as it arrives: past `limit` bytes it is refused (413) without reading
    the rest, whatever the body's shape (declared length, chunked, multipart); not complete by
    `deadline` (a client that declares more than it sends) it is refused (408)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadInput(413, f"upload of {declared} bytes is over the limit of {limit}")
    chunks, received = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - time.time()))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise BadInput(408, f"the upload did not arrive in time ({received} bytes received)") from None
        received += len(chunk)
        if received > limit:
            raise BadInput(413, f"upload over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request, max_bytes: int, deadline: float) -> bytes:
    """The image bytes of a multipart form (field `image`) or of a raw image body; size-capped and
    timed as they arrive (read_body); the form is parsed from the bytes already read."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        data = await _multipart_image(request, await read_body(request, max_bytes + MULTIPART_OVERHEAD, deadline),
                                      max_bytes)
    elif content_type in IMAGE_TYPES.values():
        data = await read_body(request, max_bytes, deadline)
    else:
        raise BadInput(415, f"content type {content_type or 'none'!r}: send multipart/form-data (field 'image'), "
                            "image/jpeg or image/png")
    if len(data) > max_bytes:
        raise BadInput(413, f"upload over the limit of {max_bytes} bytes")
    return data


async def _multipart_image(request: Request, body: bytes, max_bytes: int) -> bytes:
    """The file field `image` of a multipart body already read, parsed by Starlette's form parser."""
    sent = [False]

    async def replay():  # the body, once, as the ASGI receive channel the parser reads
        if sent[0]:
            return {"type": "http.disconnect"}
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except Exception as exc:  # malformed multipart
        raise BadInput(400, f"unreadable multipart body ({exc})") from None
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise BadInput(400, "multipart body without a file field named 'image'")
    data = await upload.read(max_bytes + 1)
    await form.close()
    return data
