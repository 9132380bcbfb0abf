"""Where fetched media is kept, keyed by content hash: a local folder or an S3-compatible bucket.

Keys look like ``<sha256>.<ext>``: the same bytes are stored once, whoever sent them.
"""

from __future__ import annotations

import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from models.settings import Settings, get_settings

KEY_RE = re.compile(r"^[0-9a-f]{64}\.[a-z0-9]{1,5}$")


def is_valid_key(key: str) -> bool:
    # fullmatch: "$" alone would also accept a trailing newline.
    return KEY_RE.fullmatch(key) is not None


def key_for(sha256: str, extension: str) -> str:
    key = f"{sha256}.{extension}"
    if not is_valid_key(key):
        raise ValueError(f"not a media key: {key!r}")
    return key


class MediaStore(Protocol):
    def put(self, key: str, data: bytes, mime: str) -> None: ...

    def get(self, key: str) -> tuple[bytes, str] | None:
        """The bytes and MIME type stored under ``key``, or None."""
        ...


class LocalMediaStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if not is_valid_key(key):
            raise ValueError("invalid media key")
        return self.root / key[:2] / key

    def put(self, key: str, data: bytes, mime: str) -> None:
        path = self._path(key)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
        path.with_suffix(path.suffix + ".mime").write_text(mime)

    def get(self, key: str) -> tuple[bytes, str] | None:
        path = self._path(key)
        if not path.exists():
            return None
        mime_file = path.with_suffix(path.suffix + ".mime")
        mime = mime_file.read_text() if mime_file.exists() else "application/octet-stream"
        return path.read_bytes(), mime


class S3MediaStore:
    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def put(self, key: str, data: bytes, mime: str) -> None:
        if not is_valid_key(key):
            raise ValueError("invalid media key")
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=mime)

    def get(self, key: str) -> tuple[bytes, str] | None:
        if not is_valid_key(key):
            raise ValueError("invalid media key")
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        return obj["Body"].read(), obj.get("ContentType") or "application/octet-stream"


def s3_client(settings: Settings) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key,
    )


@lru_cache(maxsize=1)
def get_media_store() -> MediaStore:
    settings = get_settings()
    if settings.media_backend == "s3":
        if not settings.s3_bucket:
            raise ValueError("WADISPATCH_MEDIA_BACKEND=s3 needs WADISPATCH_S3_BUCKET")
        return S3MediaStore(s3_client(settings), settings.s3_bucket)
    return LocalMediaStore(settings.media_dir)
