"""Meta's media limits as the sandbox enforces them (shared/meta/cloud-api-facts.md).

Kept apart from the worker's own table on purpose: the sandbox plays Meta, so a mistake in the
worker's table shows up as a refused upload in tests instead of being agreed with.
"""

from __future__ import annotations

MB = 1024 * 1024

# MIME type -> (media kind, largest size Meta accepts)
ACCEPTED: dict[str, tuple[str, int]] = {
    "image/jpeg": ("image", 5 * MB),
    "image/png": ("image", 5 * MB),
    "video/mp4": ("video", 16 * MB),
    "video/3gpp": ("video", 16 * MB),
    "audio/aac": ("audio", 16 * MB),
    "audio/amr": ("audio", 16 * MB),
    "audio/mpeg": ("audio", 16 * MB),
    "audio/mp4": ("audio", 16 * MB),
    "audio/ogg": ("audio", 16 * MB),
    "text/plain": ("document", 100 * MB),
    "application/pdf": ("document", 100 * MB),
    "application/msword": ("document", 100 * MB),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ("document", 100 * MB),
    "application/vnd.ms-excel": ("document", 100 * MB),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ("document", 100 * MB),
    "application/vnd.ms-powerpoint": ("document", 100 * MB),
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ("document", 100 * MB),
    "image/webp": ("sticker", 500 * 1024),
}


def upload_problem(mime: str, size: int) -> str | None:
    if mime not in ACCEPTED:
        return f"Unsupported media type {mime}"
    kind, cap = ACCEPTED[mime]
    if size == 0:
        return "The file is empty"
    if size > cap:
        return f"{kind} files may be at most {cap} bytes; this one is {size}"
    return None


def kind_accepts(message_kind: str, mime: str) -> bool:
    """Whether an uploaded file of ``mime`` may be sent as a ``message_kind`` message."""
    kind = ACCEPTED.get(mime, ("", 0))[0]
    # Any document type may be sent as a document; images only as images, and so on.
    return kind == message_kind
