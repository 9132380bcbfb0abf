"""Serves stored media behind signed URLs (the inbox shows media through these)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from models.media_signing import signature_is_valid
from models.media_store import get_media_store, is_valid_key
from models.settings import get_settings

router = APIRouter(tags=["media"])


class MediaRefusal(BaseModel):
    error: str
    message: str


def _refused(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": "Forbidden" if status == 403 else "Not found", "message": message}, status)


@router.get(
    "/media/{key}",
    # The file goes out as stored, with its own media type: not JSON.
    response_class=Response,
    responses={
        200: {"description": "the file", "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
        403: {"model": MediaRefusal, "description": "missing, invalid or expired signature"},
        404: {"model": MediaRefusal, "description": "no such file"},
    },
)
async def get_media(
    key: str,
    expires: Annotated[str | None, Query(description="Unix time the URL expires at, as signed")] = None,
    signature: Annotated[str | None, Query(description="HMAC-SHA256 of the key and expiry (hex)")] = None,
) -> Response:
    """A stored media file, for a URL signed by wadispatch (valid a year by default).

    Anything wrong with the signing values (missing, malformed, expired, not ours) is a 403."""
    if expires is None or signature is None or not is_valid_key(key):
        return _refused(403, "a signed URL is required")
    if not signature_is_valid(get_settings().secret_key, key, expires, signature):
        return _refused(403, "invalid or expired signature")
    found = await run_in_threadpool(get_media_store().get, key)
    if found is None:
        return _refused(404, "no such media")
    data, mime = found
    return Response(data, media_type=mime, headers={"Cache-Control": "private, max-age=86400"})
