"""The type check: sniffed from the bytes, matched to what Meta accepts for the kind."""

from __future__ import annotations

import pytest

from meta_sandbox.sample_media import SAMPLES
from worker.media.kinds import RULES, check_media
from worker.meta_errors import Permanent

ACCEPTED = [
    ("image", "jpg"), ("image", "png"), ("video", "mp4"), ("audio", "mp3"), ("audio", "ogg"),
    ("document", "pdf"), ("document", "txt"), ("sticker", "webp"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "ext"), ACCEPTED)
def test_accepted(kind, ext):
    data, mime = SAMPLES[ext]
    assert check_media(kind, data, None).mime == mime
    assert check_media(kind, data, mime).mime == mime


@pytest.mark.parametrize(
    ("kind", "ext"),
    [("image", "pdf"), ("image", "webp"), ("video", "png"), ("audio", "mp4"), ("document", "png"), ("sticker", "png")],
)
def test_wrong_kind_is_unsupported(kind, ext):
    with pytest.raises(Permanent) as refused:
        check_media(kind, SAMPLES[ext][0], None)
    assert refused.value.error_code == "MEDIA_TYPE_UNSUPPORTED"


def test_declared_type_contradicting_the_bytes_is_refused():
    with pytest.raises(Permanent) as refused:
        check_media("image", SAMPLES["jpg"][0], "image/png")
    assert refused.value.error_code == "MEDIA_TYPE_UNSUPPORTED" and "contradicts" in refused.value.title


def test_common_aliases_are_the_same_type():
    assert check_media("image", SAMPLES["jpg"][0], "image/jpg").mime == "image/jpeg"
    assert check_media("audio", SAMPLES["mp3"][0], "audio/mp3; charset=binary").mime == "audio/mpeg"


@pytest.mark.parametrize(("kind", "cap"), [(k, r.max_bytes) for k, r in RULES.items()])
def test_size_caps_at_and_past_the_limit(kind, cap):
    sample = {"image": "png", "video": "mp4", "audio": "mp3", "document": "pdf", "sticker": "webp"}[kind]
    head = SAMPLES[sample][0]
    if kind == "sticker":
        head = head + b"ANIM"  # animated: the 500 KB cap applies
    at_cap = head + b"\0" * (cap - len(head))
    assert check_media(kind, at_cap, None)
    with pytest.raises(Permanent) as refused:
        check_media(kind, at_cap + b"\0", None)
    assert refused.value.error_code == "MEDIA_TOO_LARGE"


def test_static_stickers_have_the_smaller_cap():
    static = SAMPLES["webp"][0] + b"\0" * (100 * 1024)
    with pytest.raises(Permanent, match="static stickers"):
        check_media("sticker", static, None)
