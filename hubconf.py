"""paddle.hub entry points for the eight CoaT variants.

    model = paddle.hub.load("path/to/this/repo", "coat_lite_small", source="local",
                            pretrained="coat_lite_small.pdparams")
"""
dependencies = ["paddle", "numpy", "ml_dtypes", "PIL"]

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
