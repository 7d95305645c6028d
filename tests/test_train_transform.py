"""The train transform equals timm's ``create_transform(is_training=True)`` for CoaT, given the
same random draws: per RandAugment op, per stage, and for whole draws."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import AugmentOp
from timm.data.transforms import RandomResizedCropAndInterpolation

from paddle_model.train.data import RAND_OPS, SampleDraws, TrainTransform
from paddle_model.transforms import IMAGENET_MEAN

SIZE = 48
HPARAMS = {
    "translate_const": int(SIZE * 0.45),
    "img_mean": tuple(min(255, round(255 * x)) for x in IMAGENET_MEAN),
    "interpolation": Image.BICUBIC,
    "magnitude_std": 0.5,
}


class TimmDraws:
    """Draws from the sources timm's transform uses, seeded as the test seeds them for timm:
    python's random, numpy's global RandomState and torch's default generator."""

    def __init__(self, seed: int) -> None:
        self.py = random.Random(seed)
        self.np = np.random.RandomState(seed)
        self.torch = torch.Generator().manual_seed(seed)

    def random(self):
        return self.py.random()

    def uniform(self, a, b):
        return self.py.uniform(a, b)

    def randint(self, a, b):
        return self.py.randint(a, b)

    def gauss(self, mu, sigma):
        return self.py.gauss(mu, sigma)

    def flip(self):
        return torch.rand(1, generator=self.torch).item()

    def choose(self, n, k):
        return [int(i) for i in self.np.choice(n, k)]

    def normal(self, shape):
        return torch.empty(shape).normal_(generator=self.torch).numpy()


def seed_timm(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)  # blocks and edges, not just noise
    big = np.kron(smooth, np.ones((9, 9, 1), np.uint8))
    noise = rng.integers(0, 40, big.shape, dtype=np.uint8)
    return Image.fromarray(np.clip(big.astype(int) + noise, 0, 255).astype(np.uint8))  # 72 x 54


@pytest.mark.parametrize("name", RAND_OPS)
def test_each_rand_augment_op_gives_timms_pixels(name, photo):
    image = photo.resize((SIZE, SIZE))
    for seed in (0, 1, 3, 4, 5):  # both signs of the signed ops; seed 2 draws magnitude 10 (below)
        seed_timm(seed)
        ref = AugmentOp(name, prob=1.0, magnitude=9, hparams=HPARAMS)(image)
        draws = TimmDraws(seed)
        magnitude = max(0.0, min(draws.gauss(9, 0.5), 10.0))
        got = TrainTransform(SIZE).op(image, name, magnitude, draws)
        assert np.array_equal(np.asarray(got), np.asarray(ref)), (name, seed)


def test_posterize_at_the_clipped_magnitude_10_keeps_no_bit_where_timm_with_new_pillow_raises(photo):
    with pytest.raises(ValueError, match="bits must be between"):
        AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10, hparams={**HPARAMS, "magnitude_std": 0})(
            photo
        )
    got = TrainTransform(SIZE).op(photo, "PosterizeIncreasing", 10.0, TimmDraws(0))
    assert np.asarray(got).max() == 0  # what Pillow's posterize gave for 0 bits


def test_the_random_resized_crop_gives_timms_pixels(photo):
    timm_crop = RandomResizedCropAndInterpolation(SIZE, interpolation="bicubic")
    for seed in range(20):
        seed_timm(seed)
        ref = timm_crop(photo)
        got = TrainTransform(SIZE).crop(photo, TimmDraws(seed))
        assert np.array_equal(np.asarray(got), np.asarray(ref)), seed


def test_whole_draws_give_timms_pixels_bit_for_bit(photo):
    timm_tf = create_transform(
        input_size=SIZE,
        is_training=True,
        auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bicubic",
        re_prob=0.25,
        re_mode="pixel",
        re_count=1,
    )
    ours, erased, flipped = TrainTransform(SIZE), 0, 0
    for seed in range(40):
        seed_timm(seed)
        ref = timm_tf(photo).numpy()
        got = ours(photo, TimmDraws(seed))
        assert got.dtype == np.float32 and np.array_equal(got, ref), seed
        erased += int(np.abs(ref).max() > 3)  # normal noise beyond any normalised pixel's reach
        flipped += TimmDraws(seed).flip() < 0.5
    assert erased > 0 and 0 < flipped < 40  # the draws exercised erasing and both flips


def test_the_transform_and_its_draws_pickle_and_repeat(photo):
    tf = pickle.loads(pickle.dumps(TrainTransform(SIZE)))
    a = tf(photo, SampleDraws(0, 1, 2))
    assert np.array_equal(a, TrainTransform(SIZE)(photo, SampleDraws(0, 1, 2)))
    assert not np.array_equal(a, tf(photo, SampleDraws(0, 1, 3)))
