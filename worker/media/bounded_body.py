"""A response body collected up to a size cap that holds on the decoded bytes.

The fetcher asks for ``Accept-Encoding: identity``, but a server may compress anyway, and a few
kilobytes of gzip can inflate to gigabytes: decoding a whole network read at once (what httpx's
``iter_bytes`` does) would inflate all of that in memory before any cap is checked. Here gzip and
deflate are inflated step by step with zlib's ``max_length``, never more than one byte past what
the cap still allows; other encodings are refused rather than decoded blindly.
"""

from __future__ import annotations

import zlib

# Content-Encoding -> zlib wbits (gzip header / zlib header, RFC 9110 section 8.4.1).
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# Decoded bytes made per step: zlib builds its output in blocks and joins them, so one big step
# would briefly hold it twice.
_STEP = 64 * 1024


class BodyTooLarge(Exception):
    pass


class UnsupportedEncoding(Exception):
    pass


class CorruptEncoding(Exception):
    pass


class BoundedBody:
    def __init__(self, content_encoding: str | None, max_bytes: int) -> None:
        encoding = (content_encoding or "").strip().lower()
        self.max_bytes = max_bytes
        self.size = 0
        self._parts: list[bytes] = []
        self._inflater: zlib._Decompress | None = None
        if encoding in ("", "identity"):
            return
        if encoding not in _ZLIB_WBITS:
            raise UnsupportedEncoding(encoding)
        self._inflater = zlib.decompressobj(_ZLIB_WBITS[encoding])

    def feed(self, raw: bytes) -> None:
        """Add bytes as they came off the network; BodyTooLarge once the decoded size passes the cap."""
        if self._inflater is None:
            self._keep(raw)
            return
        pending = raw
        while pending and not self._inflater.eof:
            try:
                decoded = self._inflater.decompress(pending, min(_STEP, self.max_bytes - self.size + 1))
            except zlib.error as exc:
                raise CorruptEncoding(str(exc)) from exc
            self._keep(decoded)
            pending = self._inflater.unconsumed_tail

    def finish(self) -> bytes:
        if self._inflater is not None:
            try:
                self._keep(self._inflater.flush())
            except zlib.error as exc:
                raise CorruptEncoding(str(exc)) from exc
        return b"".join(self._parts)

    def _keep(self, decoded: bytes) -> None:
        self.size += len(decoded)
        if self.size > self.max_bytes:
            raise BodyTooLarge(self.size)
        self._parts.append(decoded)
