"""The evaluation preprocessing of each variant, on PIL and numpy alone.

It reproduces timm's eval transform step for step (so the inputs are identical, not close):
224 models resize the shorter side to floor(224 / 0.9) = 248 with bicubic filtering and take
the centre 224x224; the 384 model squashes the image to 384x384. Then /255 and ImageNet
mean/std normalisation, in float32. Sizes whose resize would exceed PIL's pixel limit are
refused (:meth:`EvalTransform.check_size`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .errors import CoatError
from .variants import CoatVariant, get_variant

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


@dataclass(frozen=True)
class EvalTransform:
    """Resize, crop and normalise a PIL image into a [3, H, W] float32 array."""

    size: int
    resize: int  # shorter side before the centre crop; with crop_mode "squash", both sides
    crop_mode: str
    interpolation: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def for_variant(cls, variant: str | CoatVariant) -> EvalTransform:
        v = get_variant(variant) if isinstance(variant, str) else variant
        return cls(
            size=v.img_size,
            resize=math.floor(v.img_size / v.crop_pct),
            crop_mode=v.crop_mode,
            interpolation=v.interpolation,
        )

    def describe(self) -> dict:
        """The settings, for manifests and model cards."""
        return {**asdict(self), "crop_pct": self.size / self.resize}

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of an image of this size after the resize, before the centre crop."""
        if self.crop_mode == "squash":
            return self.resize, self.resize
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize * long / short)
        return (self.resize, new_long) if width <= height else (new_long, self.resize)

    def check_size(self, width: int, height: int) -> None:
        """Refuse an image whose resize would exceed PIL's decompression limit.

        A thin image is small on disk and when decoded, but resizing its shorter side to 248
        multiplies the longer one: a 1x10000 PNG would become 248x2480000 pixels (GBs).
        PIL bounds only the source, so the resize target is bounded here, by the same limit.
        """
        limit = Image.MAX_IMAGE_PIXELS
        if width < 1 or height < 1:
            raise CoatError(f"the image is {width}x{height} pixels: empty")
        new_w, new_h = self.resized_size(width, height)
        if limit is not None and new_w * new_h > limit:
            raise CoatError(
                f"the image is {width}x{height} pixels, so resizing its shorter side to {self.resize} "
                f"would make {new_w}x{new_h} = {new_w * new_h:,} pixels, more than PIL's limit of "
                f"{limit:,}; crop or pad it to a less extreme aspect ratio"
            )

    def __call__(self, image: Image.Image) -> np.ndarray:
        self.check_size(*image.size)
        image = image.convert("RGB")
        image = image.resize(self.resized_size(*image.size), _FILTERS[self.interpolation])
        w, h = image.size
        top = int(round((h - self.size) / 2.0))
        left = int(round((w - self.size) / 2.0))
        image = image.crop((left, top, left + self.size, top + self.size))
        x = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))


def eval_transform(variant: str | CoatVariant) -> EvalTransform:
    """The preprocessing the published accuracy of ``variant`` was measured with."""
    return EvalTransform.for_variant(variant)
