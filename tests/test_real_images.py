"""Real photographs: the Paddle-side preprocessing equals timm's, and the models agree on them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from paddle_model.transforms import eval_transform
from paddle_model.variants import VARIANTS
from reference.parity import candidate_models, compare_models, reference_models

from .conftest import sample_image_paths, timm_eval_batch


@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_lite_medium_384"])
def test_preprocessing_equals_timms_eval_transform(name):
    paths = sample_image_paths()
    ours = np.stack([eval_transform(name)(Image.open(p)) for p in paths])
    theirs = timm_eval_batch(name, paths)
    size = VARIANTS[name].img_size
    assert ours.shape == theirs.shape == (len(paths), 3, size, size)
    assert ours.dtype == np.float32
    assert float(np.abs(ours - theirs).max()) <= 1e-6


def test_eval_transform_describes_the_published_settings():
    assert eval_transform("coat_lite_small").describe()["resize"] == 248
    squash = eval_transform("coat_lite_medium_384").describe()
    assert (squash["resize"], squash["crop_mode"], squash["crop_pct"]) == (384, "squash", 1.0)


@pytest.mark.parametrize("name", ["coat_tiny", "coat_lite_tiny"])
def test_models_agree_on_real_images(name, converted):
    src, dst = converted(name)
    x = np.stack([eval_transform(name)(Image.open(p)) for p in sample_image_paths()])
    v = VARIANTS[name]
    reference, reference_backbone = reference_models(src, v, (v.img_size, v.img_size))
    candidate, candidate_backbone = candidate_models(dst, v, 1000)
    report = compare_models(reference, candidate, x, name, reference_backbone, candidate_backbone)
    assert report.ok, report.table()
    assert report.logits.top1_agree == 1.0
