"""``reference.release.plan``: each source is hashed and matched against the official releases
once, and whether it is official follows from that one match."""

from __future__ import annotations

import shutil

import paddle_model
from reference import release as release_module


def test_plan_matches_each_source_against_the_official_releases_once(checkpoints, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(checkpoints("coat_lite_tiny"), src / "mine.pth")
    asked = []
    v = paddle_model.VARIANTS["coat_lite_tiny"]

    def as_official(sha256):
        asked.append(sha256)
        return v  # as if it were the official file

    monkeypatch.setattr(release_module, "official_variant", as_official)
    [planned] = release_module.plan(src, allow_unofficial=False)
    assert len(asked) == 1
    assert (planned.known, planned.variant, planned.official) == (v, v, True)


def test_an_unofficial_source_allowed_is_planned_not_official(checkpoints, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(checkpoints("coat_lite_tiny"), src / "mine.pth")
    [planned] = release_module.plan(src, allow_unofficial=True)
    assert planned.known is None and planned.official is False
    assert planned.variant is paddle_model.VARIANTS["coat_lite_tiny"]
