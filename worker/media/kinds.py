"""What Meta accepts for each media kind (shared/meta/cloud-api-facts.md), and the check of a file
against it: the type is sniffed from the bytes, never taken from the URL or the server."""

from __future__ import annotations

from dataclasses import dataclass

import filetype

from worker.media import errors

MB = 1024 * 1024


@dataclass(frozen=True)
class KindRule:
    mimes: frozenset[str]
    max_bytes: int


RULES: dict[str, KindRule] = {
    "image": KindRule(frozenset({"image/jpeg", "image/png"}), 5 * MB),
    "video": KindRule(frozenset({"video/mp4", "video/3gpp"}), 16 * MB),
    "audio": KindRule(frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}), 16 * MB),
    "document": KindRule(
        frozenset(
            {
                "text/plain",
                "application/pdf",
                "application/msword",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "application/vnd.ms-excel",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "application/vnd.ms-powerpoint",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            }
        ),
        100 * MB,
    ),
    # Animated stickers may be 500 KB; static ones 100 KB (checked after sniffing).
    "sticker": KindRule(frozenset({"image/webp"}), 500 * 1024),
}
STATIC_STICKER_MAX = 100 * 1024

# Names clients use for the same type.
ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "audio/mp3": "audio/mpeg",
    "audio/x-m4a": "audio/mp4",
    "audio/opus": "audio/ogg",
    "application/ogg": "audio/ogg",
    "image/apng": "image/png",
    "video/3gp": "video/3gpp",
}

EXTENSIONS = {
    "text/plain": "txt",
}


@dataclass(frozen=True)
class CheckedMedia:
    mime: str
    extension: str


def normalize(mime: str) -> str:
    base = mime.split(";", 1)[0].strip().lower()
    return ALIASES.get(base, base)


def _looks_like_text(data: bytes) -> bool:
    try:
        data[:65536].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in data[:65536]


def check_media(kind: str, data: bytes, declared_mime: str | None) -> CheckedMedia:
    """The file's real type, if Meta accepts it for ``kind``; else a permanent MEDIA_* error."""
    rule = RULES[kind]
    if len(data) > rule.max_bytes:
        raise errors.too_large(rule.max_bytes, kind)
    guess = filetype.guess(data[:8192])
    mime = normalize(guess.mime) if guess else None
    extension = guess.extension if guess else None
    if mime is None and kind == "document" and _looks_like_text(data):
        mime, extension = "text/plain", "txt"
    if mime is None or mime not in rule.mimes:
        accepted = ", ".join(sorted(rule.mimes))
        raise errors.unsupported(f"{kind} must be one of {accepted}; the file is {mime or 'of an unrecognised type'}")
    if declared_mime and normalize(declared_mime) != mime:
        raise errors.unsupported(f"the declared mimetype {declared_mime} contradicts the file's content ({mime})")
    if kind == "sticker" and b"ANIM" not in data[:4096] and len(data) > STATIC_STICKER_MAX:
        raise errors.too_large(STATIC_STICKER_MAX, "static stickers")
    return CheckedMedia(mime=mime, extension=EXTENSIONS.get(mime, extension or "bin"))
