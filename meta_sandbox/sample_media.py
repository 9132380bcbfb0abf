"""Small files that sniff as each type Meta accepts (magic numbers plus padding).

The sandbox serves them so local runs and tests have media to fetch without the internet."""

from __future__ import annotations

PAD = bytes(range(256)) * 4

SAMPLES: dict[str, tuple[bytes, str]] = {
    "jpg": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + PAD + b"\xff\xd9", "image/jpeg"),
    "png": (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde" + PAD,
        "image/png",
    ),
    "mp4": (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + PAD, "video/mp4"),
    "mp3": (b"ID3\x03\x00\x00\x00\x00\x00\x0f" + PAD, "audio/mpeg"),
    "ogg": (b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00" + PAD, "audio/ogg"),
    "pdf": (
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" + PAD + b"\n%%EOF\n",
        "application/pdf",
    ),
    "txt": (b"Plain text notes for the lead.\n" * 20, "text/plain"),
    "webp": (b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00" + PAD[:64], "image/webp"),
}


def sample(extension: str) -> tuple[bytes, str]:
    return SAMPLES[extension]
