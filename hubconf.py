"""paddle.hub entry points for the eight CoaT variants.

    model = paddle.hub.load("path/to/this/repo", "coat_lite_small", source="local", pretrained=True)

``pretrained=True`` fetches the variant's published weights (from ``$COAT_PADDLE_WEIGHTS_URL``
or the project's own location, see ``paddle_model/hub.py``) into the cache, checked by sha256;
``pretrained="hf-hub:<repo_id>"`` takes a release folder from the Hugging Face Hub, and
``pretrained="coat_lite_small.pdparams"`` a file of your own.
"""

dependencies = ["paddle", "numpy", "ml_dtypes", "PIL", "tqdm"]

from paddle_model.factory import (  # noqa: E402,F401  (the entry points)
    coat_lite_medium,
    coat_lite_medium_384,
    coat_lite_mini,
    coat_lite_small,
    coat_lite_tiny,
    coat_mini,
    coat_small,
    coat_tiny,
)
