"""CoaT in PaddlePaddle, faithful to the official implementation.

Paper: "Co-Scale Conv-Attentional Image Transformers", Xu et al., ICCV 2021
(https://arxiv.org/abs/2104.06399). Official code: https://github.com/mlpc-ucsd/CoaT.

The module and parameter names are the official ones (and timm's), so state-dict keys map one
to one, and the blocks read side by side with timm's ``timm/models/coat.py``. Like the official
code, and unlike timm's port, the parallel blocks resample between scales to the target scale's
size, so the model runs at any input size of at least its variant's ``min_input_size`` (32 for every
released variant).

The layer classes are a choice made at construction (:class:`CoatLayers`), as timm chooses
``norm_layer``: coat.py's own classes use Paddle's ops; :mod:`paddle_model.kernels.fast` gives
subclasses that compute the same with compiled CPU ops where a call allows it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from converter.layout import FEATURE_NAMES

from . import runtime
from .errors import InputError
from .variants import LATER_PATCH_SIZE, CoatVariant

_trunc_normal = nn.initializer.TruncatedNormal(mean=0.0, std=0.02, a=-2.0, b=2.0)
_zeros = nn.initializer.Constant(0.0)
_ones = nn.initializer.Constant(1.0)


def _linear(n_in: int, n_out: int) -> nn.Linear:
    """A Linear initialised as timm's CoaT does: truncated normal (std .02), zero bias."""
    return nn.Linear(
        n_in,
        n_out,
        weight_attr=paddle.ParamAttr(initializer=_trunc_normal),
        bias_attr=paddle.ParamAttr(initializer=_zeros),
    )


def _conv(
    c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1, conv=nn.Conv2D
) -> nn.Layer:
    """A convolution with torch's default initialisation, as timm's CoaT leaves it.

    torch draws weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """
    fan_in = (c_in // groups) * kernel ** (2 if conv is nn.Conv2D else 1)
    bound = 1.0 / math.sqrt(fan_in)
    init = nn.initializer.Uniform(-bound, bound)
    return conv(
        c_in,
        c_out,
        kernel,
        stride=stride,
        padding=padding,
        groups=groups,
        weight_attr=paddle.ParamAttr(initializer=init),
        bias_attr=paddle.ParamAttr(initializer=init),
    )


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last axis with its epsilon as the public attribute ``eps``.

    Paddle's LayerNorm keeps epsilon only in a private attribute (set once, not read here);
    this forward reads ``eps``, as torch names it, and so does anything else that needs it.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__(
            dim,
            epsilon=eps,
            weight_attr=paddle.ParamAttr(initializer=_ones),
            bias_attr=paddle.ParamAttr(initializer=_zeros),
        )
        self.dim = dim
        self.eps = eps

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return F.layer_norm(x, self.dim, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def drop_path(x: paddle.Tensor, p: float, training: bool) -> paddle.Tensor:
    """Stochastic depth per sample, scaled by the keep probability (timm's drop_path)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = [x.shape[0]] + [1] * (x.ndim - 1)
    mask = paddle.bernoulli(paddle.full(shape, keep, dtype=x.dtype))
    return x * mask / keep


class DropPath(nn.Layer):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Layer):
    """fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = _linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = _linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class PatchEmbed(nn.Layer):
    """Non-overlapping patches by a strided convolution, then LayerNorm over channels."""

    def __init__(
        self, patch_size: int, in_chans: int, embed_dim: int, eps: float, layers: CoatLayers | None = None
    ) -> None:
        super().__init__()
        layers = layers or PADDLE_LAYERS
        self.patch_size = patch_size
        self.proj = _conv(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = layers.layer_norm(embed_dim, eps)

    def forward(
        self, x: paddle.Tensor, size: tuple[int, int] | None = None
    ) -> tuple[paddle.Tensor, tuple[int, int]]:
        """Images [B, C, H, W], or with ``size`` the previous stage's tokens [B, 1 + H*W, C]
        of an image that size -> ([B, H/p * W/p, out] tokens, their grid size)."""
        if size is not None:
            x = _tokens_to_map(x, size)
        x = self.proj(x)  # [B, out, H/p, W/p]
        size = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose([0, 2, 1])  # [B, H*W, out]
        return self.norm(x), size


def _tokens_to_map(x: paddle.Tensor, size: tuple[int, int]) -> paddle.Tensor:
    """[B, 1 + H*W, C] tokens (CLS first) -> [B, C, H, W] image without the CLS token."""
    return x[:, 1:, :].transpose([0, 2, 1]).reshape([x.shape[0], x.shape[2], size[0], size[1]])


class ConvPosEnc(nn.Layer):
    """Convolutional position encoding: a residual depthwise 3x3 over the image tokens."""

    def __init__(self, dim: int, k: int = 3) -> None:
        super().__init__()
        self.proj = _conv(dim, dim, k, padding=k // 2, groups=dim)

    def forward(self, x: paddle.Tensor, size: tuple[int, int]) -> paddle.Tensor:
        cls_token = x[:, :1]
        feat = _tokens_to_map(x, size)  # [B, C, H, W]
        feat = self.proj(feat) + feat
        return paddle.concat([cls_token, feat.flatten(2).transpose([0, 2, 1])], axis=1)


class ConvRelPosEnc(nn.Layer):
    """Convolutional relative position encoding: q * depthwise-conv(v), per head split.

    ``window`` maps a kernel size to the number of heads that use it.
    """

    def __init__(self, head_chs: int, num_heads: int, window: dict[int, int]) -> None:
        super().__init__()
        if sum(window.values()) != num_heads:
            raise ValueError(
                f"crpe window {dict(window)} assigns {sum(window.values())} heads, "
                f"the attention has {num_heads}"
            )
        self.conv_list = nn.LayerList()
        self.channel_splits = []
        for kernel, heads in window.items():
            ch = heads * head_chs
            self.conv_list.append(_conv(ch, ch, kernel, padding=kernel // 2, groups=ch))
            self.channel_splits.append(ch)

    def forward(self, q: paddle.Tensor, v: paddle.Tensor, size: tuple[int, int]) -> paddle.Tensor:
        B, h, N, Ch = q.shape
        H, W = size
        q_img = q[:, :, 1:, :]  # [B, h, H*W, Ch]
        v_img = v[:, :, 1:, :].transpose([0, 1, 3, 2]).reshape([B, h * Ch, H, W])
        parts = paddle.split(v_img, self.channel_splits, axis=1)
        conv_v = paddle.concat([conv(p) for conv, p in zip(self.conv_list, parts)], axis=1)
        conv_v = conv_v.reshape([B, h, Ch, H * W]).transpose([0, 1, 3, 2])  # [B, h, H*W, Ch]
        ev_hat = q_img * conv_v
        return F.pad(ev_hat, [0, 0, 1, 0], data_format="NCHW")  # zero row for the CLS token


class FactorAttnConvRelPosEnc(nn.Layer):
    """Factorised attention, softmax(K)^T V taken first, plus the conv relative encoding."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool, proj_drop: float, shared_crpe: ConvRelPosEnc
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = (
            _linear(dim, dim * 3)
            if qkv_bias
            else nn.Linear(
                dim, dim * 3, weight_attr=paddle.ParamAttr(initializer=_trunc_normal), bias_attr=False
            )
        )
        self.proj = _linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.crpe = shared_crpe

    def forward(self, x: paddle.Tensor, size: tuple[int, int]) -> paddle.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape([B, N, 3, self.num_heads, C // self.num_heads])
        q, k, v = qkv.transpose([2, 0, 3, 1, 4]).unbind(0)  # each [B, h, N, Ch]
        # softmax over the tokens, taken on the last axis of k^T: same numbers, faster in Paddle
        k_softmax_t = F.softmax(k.transpose([0, 1, 3, 2]), axis=-1)  # [B, h, Ch, N]
        factor_att = q @ (k_softmax_t @ v)  # [B, h, N, Ch]
        crpe = self.crpe(q, v, size=size)
        x = self.scale * factor_att + crpe
        x = x.transpose([0, 2, 1, 3]).reshape([B, N, C])  # [B, N, C]
        return self.proj_drop(self.proj(x))


class SerialBlock(nn.Layer):
    """cpe -> LN -> factorised conv-attention -> residual; LN -> MLP -> residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        qkv_bias: bool,
        proj_drop: float,
        drop_path: float,
        eps: float,
        shared_cpe: ConvPosEnc,
        shared_crpe: ConvRelPosEnc,
        layers: CoatLayers | None = None,
    ) -> None:
        super().__init__()
        layers = layers or PADDLE_LAYERS
        self.cpe = shared_cpe
        self.norm1 = layers.layer_norm(dim, eps)
        self.factoratt_crpe = layers.attention(dim, num_heads, qkv_bias, proj_drop, shared_crpe)
        self.drop_path = DropPath(drop_path)
        self.norm2 = layers.layer_norm(dim, eps)
        self.mlp = layers.mlp(dim, mlp_hidden, proj_drop)

    def forward(self, x: paddle.Tensor, size: tuple[int, int]) -> paddle.Tensor:
        x = self.cpe(x, size)
        x = x + self.drop_path(self.factoratt_crpe(self.norm1(x), size))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@lru_cache(maxsize=256)
def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of 1-D linear resampling, align_corners=False.

    Reproduces torch's upsample_bilinear2d index and weight arithmetic for a resize to a target
    size, output side 1 included: float32 scale, source index ``scale * (dst + 0.5) - 0.5``
    rounded once (torch's CPU build contracts it into a fused multiply-add), clamped at 0.
    """
    scale = np.float32(n_in) / np.float32(n_out)
    dst = np.arange(n_out, dtype=np.float64)
    src = (np.float64(scale) * (dst + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0.astype(np.float32)
    w0 = np.float32(1) - w1
    m = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), w0)
    np.add.at(m, (rows, i1), w1)
    return m


def _bilinear_matrix_ops(n_in, n_out) -> paddle.Tensor:
    """:func:`_bilinear_matrix` in Paddle ops, for graphs whose sizes are known only at run time."""
    n_in = paddle.cast(paddle.to_tensor(n_in) if isinstance(n_in, int) else n_in, "int64")
    n_out = paddle.cast(paddle.to_tensor(n_out) if isinstance(n_out, int) else n_out, "int64")
    scale = paddle.cast(paddle.cast(n_in, "float32") / paddle.cast(n_out, "float32"), "float64")
    dst = paddle.arange(0, n_out, dtype="float64")
    src = paddle.clip(paddle.cast(scale * (dst + 0.5) - 0.5, "float32"), min=0.0)
    i0 = paddle.cast(src, "int64")
    i1 = paddle.minimum(i0 + 1, n_in - 1)
    w1 = (src - paddle.cast(i0, "float32")).unsqueeze(1)
    cols = paddle.arange(0, n_in, dtype="int64").unsqueeze(0)
    pick0 = paddle.cast(cols == i0.unsqueeze(1), "float32")
    pick1 = paddle.cast(cols == i1.unsqueeze(1), "float32")
    return pick0 * (1.0 - w1) + pick1 * w1


def resample_tokens(x: paddle.Tensor, size: tuple[int, int], target: tuple[int, int]) -> paddle.Tensor:
    """Bilinear resize of the image tokens of ``x`` from ``size`` to ``target``; CLS kept.

    [B, 1 + H*W, C] -> [B, 1 + H'*W', C]. Separable: one matmul per axis, in token layout.
    Eager runs take the weights from a cache; static graphs (``paddle.jit``) build them.
    """
    (H, W), (Ho, Wo) = size, target
    B, C = x.shape[0], x.shape[2]
    if paddle.in_dynamic_mode():
        ry = paddle.to_tensor(_bilinear_matrix(H, Ho), dtype=x.dtype)  # [Ho, H]
        rx = paddle.to_tensor(_bilinear_matrix(W, Wo), dtype=x.dtype)  # [Wo, W]
    else:
        ry = paddle.cast(_bilinear_matrix_ops(H, Ho), x.dtype)
        rx = paddle.cast(_bilinear_matrix_ops(W, Wo), x.dtype)
    img = x[:, 1:, :].reshape([B, H, W * C])
    img = (ry @ img).reshape([B * Ho, W, C])
    img = (rx @ img).reshape([B, Ho * Wo, C])
    return paddle.concat([x[:, :1, :], img], axis=1)


class ParallelBlock(nn.Layer):
    """Scales 2-4 attend in parallel, exchange by resampling to each other's size, share an MLP."""

    def __init__(
        self,
        dims: Sequence[int],
        num_heads: int,
        mlp_hidden: int,
        qkv_bias: bool,
        proj_drop: float,
        drop_path: float,
        eps: float,
        shared_crpes: Sequence[ConvRelPosEnc],
        layers: CoatLayers | None = None,
    ) -> None:
        super().__init__()
        if not dims[1] == dims[2] == dims[3]:
            raise ValueError(f"parallel blocks need equal dims for scales 2-4, got {list(dims)}")
        layers = layers or PADDLE_LAYERS
        dim = dims[1]
        self.norm12 = layers.layer_norm(dim, eps)
        self.norm13 = layers.layer_norm(dim, eps)
        self.norm14 = layers.layer_norm(dim, eps)
        self.factoratt_crpe2 = layers.attention(dim, num_heads, qkv_bias, proj_drop, shared_crpes[1])
        self.factoratt_crpe3 = layers.attention(dim, num_heads, qkv_bias, proj_drop, shared_crpes[2])
        self.factoratt_crpe4 = layers.attention(dim, num_heads, qkv_bias, proj_drop, shared_crpes[3])
        self.drop_path = DropPath(drop_path)
        self.norm22 = layers.layer_norm(dim, eps)
        self.norm23 = layers.layer_norm(dim, eps)
        self.norm24 = layers.layer_norm(dim, eps)
        # one MLP serves the three scales, as in the official code
        self.mlp2 = self.mlp3 = self.mlp4 = layers.mlp(dim, mlp_hidden, proj_drop)

    # how the exchange resizes one scale's tokens to another's size (a class attribute, so that
    # a subclass can swap in another implementation of the same resampling)
    resample = staticmethod(resample_tokens)

    def attend_and_exchange(self, x2, x3, x4, sizes):
        """Each scale's attention plus the others' resampled to its size, added to it."""
        _, s2, s3, s4 = sizes
        cur2 = self.factoratt_crpe2(self.norm12(x2), s2)
        cur3 = self.factoratt_crpe3(self.norm13(x3), s3)
        cur4 = self.factoratt_crpe4(self.norm14(x4), s4)
        up3_2 = self.resample(cur3, s3, s2)
        up4_3 = self.resample(cur4, s4, s3)
        up4_2 = self.resample(cur4, s4, s2)
        down2_3 = self.resample(cur2, s2, s3)
        down3_4 = self.resample(cur3, s3, s4)
        down2_4 = self.resample(cur2, s2, s4)
        x2 = x2 + self.drop_path(cur2 + up3_2 + up4_2)
        x3 = x3 + self.drop_path(cur3 + up4_3 + down2_3)
        x4 = x4 + self.drop_path(cur4 + down3_4 + down2_4)
        return x2, x3, x4

    def forward(self, x1, x2, x3, x4, sizes):
        x2, x3, x4 = self.attend_and_exchange(x2, x3, x4, sizes)
        x2 = x2 + self.drop_path(self.mlp2(self.norm22(x2)))
        x3 = x3 + self.drop_path(self.mlp3(self.norm23(x3)))
        x4 = x4 + self.drop_path(self.mlp4(self.norm24(x4)))
        return x1, x2, x3, x4


@dataclass(frozen=True)
class CoatLayers:
    """The layer classes a CoaT is built from, one per kind of layer that has another form.

    :data:`PADDLE_LAYERS` are this module's (Paddle's ops); another set (the compiled forms of
    :func:`paddle_model.kernels.fast.layers`) must subclass these and compute the same, with the
    same parameters and state-dict keys. Layers put into a model after its construction are
    whatever the caller puts there.
    """

    layer_norm: type[LayerNorm]
    mlp: type[Mlp]
    patch_embed: type[PatchEmbed]
    conv_pos_enc: type[ConvPosEnc]
    attention: type[FactorAttnConvRelPosEnc]
    serial_block: type[SerialBlock]
    parallel_block: type[ParallelBlock]


PADDLE_LAYERS = CoatLayers(
    LayerNorm, Mlp, PatchEmbed, ConvPosEnc, FactorAttnConvRelPosEnc, SerialBlock, ParallelBlock
)


def _starts_cpu_inference(training: bool, x: paddle.Tensor) -> bool:
    """Whether a forward on ``x`` is eager inference on the CPU, where :func:`runtime.configure`
    applies its CPU settings: not training, eager, no gradient, and ``x`` on the CPU (a model on
    a GPU is left alone)."""
    return (
        not training and paddle.in_dynamic_mode() and not paddle.is_grad_enabled() and x.place.is_cpu_place()
    )


class CoaT(nn.Layer):
    """CoaT and CoaT-Lite: four serial stages, then (CoaT only) parallel blocks over scales 2-4."""

    def __init__(
        self,
        variant: CoatVariant,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "token",
        return_interm_layers: bool = False,
        out_features: Sequence[str] | None = None,
        layers: CoatLayers | None = None,
    ) -> None:
        """``layers``: the layer classes to build from (default :data:`PADDLE_LAYERS`, Paddle's
        ops); :func:`paddle_model.create_model` chooses them by its ``kernels`` argument."""
        super().__init__()
        layers = layers or PADDLE_LAYERS
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        self.variant = variant
        self.in_chans = in_chans
        self.min_input_size = variant.min_input_size  # height and width; smaller is refused
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.return_interm_layers = return_interm_layers
        self.out_features = tuple(out_features or FEATURE_NAMES)
        unknown = [f for f in self.out_features if f not in FEATURE_NAMES]
        if unknown:
            raise ValueError(f"unknown out_features {unknown}; choose from {list(FEATURE_NAMES)}")
        dims = variant.embed_dims
        self.num_features = dims[3]

        for i in range(4):
            self.add_parameter(
                f"cls_token{i + 1}", self.create_parameter([1, 1, dims[i]], default_initializer=_trunc_normal)
            )
        for i in range(4):
            self.add_sublayer(
                f"patch_embed{i + 1}",
                layers.patch_embed(
                    variant.patch_size if i == 0 else LATER_PATCH_SIZE,
                    in_chans if i == 0 else dims[i - 1],
                    dims[i],
                    variant.patch_norm_eps,
                    layers=layers,
                ),
            )
        cpes = [self.add_sublayer(f"cpe{i + 1}", layers.conv_pos_enc(dims[i])) for i in range(4)]
        crpes = [
            self.add_sublayer(
                f"crpe{i + 1}",
                ConvRelPosEnc(dims[i] // variant.num_heads, variant.num_heads, dict(variant.crpe_window)),
            )
            for i in range(4)
        ]
        block_args = dict(
            num_heads=variant.num_heads,
            qkv_bias=variant.qkv_bias,
            proj_drop=proj_drop_rate,
            drop_path=drop_path_rate,
            eps=variant.norm_eps,
            layers=layers,
        )
        for i in range(4):
            self.add_sublayer(
                f"serial_blocks{i + 1}",
                nn.LayerList(
                    [
                        layers.serial_block(
                            dims[i],
                            mlp_hidden=variant.mlp_hidden(i),
                            shared_cpe=cpes[i],
                            shared_crpe=crpes[i],
                            **block_args,
                        )
                        for _ in range(variant.serial_depths[i])
                    ]
                ),
            )
        self.parallel_blocks = nn.LayerList(
            [
                layers.parallel_block(
                    dims, mlp_hidden=variant.mlp_hidden(1), shared_crpes=crpes, **block_args
                )
                for _ in range(variant.parallel_depth)
            ]
        )

        self.norm2 = self.norm3 = self.norm4 = self.aggregate = self.head = None
        if not return_interm_layers:
            if not variant.is_lite:
                self.norm2 = layers.layer_norm(dims[1], variant.norm_eps)
                self.norm3 = layers.layer_norm(dims[2], variant.norm_eps)
            self.norm4 = layers.layer_norm(dims[3], variant.norm_eps)
            if not variant.is_lite:
                # CoaT classifies from the CLS tokens of scales 2-4, mixed by a 1x1 conv
                self.aggregate = _conv(3, 1, 1, conv=nn.Conv1D)
            self.head_drop = nn.Dropout(drop_rate)
            self.head = _linear(dims[3], num_classes) if num_classes > 0 else nn.Identity()

    @paddle.jit.not_to_static  # plain Python on the static shape, where open sizes are -1
    def check_input(self, x: paddle.Tensor) -> None:
        """Raise :class:`InputError` unless ``x`` is a [B, in_chans, H, W] batch with H and W at
        least :attr:`min_input_size` (a size a graph leaves open, -1, is not checked)."""
        shape = list(x.shape)
        if len(shape) != 4:
            raise InputError(
                f"CoaT takes a 4-D batch of images [B, {self.in_chans}, H, W], got shape {shape}: "
                "add the batch axis (x.unsqueeze(0)) or reshape the input"
            )
        if shape[1] >= 0 and shape[1] != self.in_chans:
            raise InputError(
                f"this CoaT takes images with {self.in_chans} channels, got {shape[1]} (shape {shape}): "
                f"convert the images to {'RGB' if self.in_chans == 3 else f'{self.in_chans} channels'}"
            )
        small = [side for side in shape[2:] if 0 <= side < self.min_input_size]
        if small:
            raise InputError(
                f"{self.variant.name} takes images of at least {self.min_input_size}x{self.min_input_size} "
                f"pixels, got {shape[2]}x{shape[3]}: resize or pad the input to at least "
                f"{self.min_input_size} on each side"
            )

    def forward_scales(self, x: paddle.Tensor) -> tuple[list[paddle.Tensor], list[tuple[int, int]]]:
        """Token sequences [B, 1 + H*W, C] of the four scales (after the parallel blocks) and their sizes."""
        self.check_input(x)
        if _starts_cpu_inference(self.training, x):
            runtime.configure()  # threads, MKL's code path, malloc
        xs, sizes = [], []
        for i in range(4):
            embed = getattr(self, f"patch_embed{i + 1}")
            x, size = embed(x) if i == 0 else embed(xs[-1], sizes[-1])
            cls_token = getattr(self, f"cls_token{i + 1}").expand([x.shape[0], -1, -1])
            x = paddle.concat([cls_token, x], axis=1)
            for blk in getattr(self, f"serial_blocks{i + 1}"):
                x = blk(x, size)
            xs.append(x)
            sizes.append(size)
        if len(self.parallel_blocks) > 0:
            x1, x2, x3, x4 = xs
            for blk in self.parallel_blocks:
                x2, x3, x4 = self.cpe2(x2, sizes[1]), self.cpe3(x3, sizes[2]), self.cpe4(x4, sizes[3])
                x1, x2, x3, x4 = blk(x1, x2, x3, x4, sizes)
            xs = [x1, x2, x3, x4]
        return xs, sizes

    def forward_features(self, x: paddle.Tensor):
        """Normed last-scale tokens (CoaT-Lite), normed scales 2-4 (CoaT), or, with
        ``return_interm_layers``, a dict of NCHW feature maps named ``x1_nocls``..``x4_nocls``."""
        xs, sizes = self.forward_scales(x)
        if self.return_interm_layers:
            return {
                name: _tokens_to_map(xs[i], sizes[i])
                for i, name in enumerate(FEATURE_NAMES)
                if name in self.out_features
            }
        if self.variant.is_lite:
            return self.norm4(xs[3])
        return [self.norm2(xs[1]), self.norm3(xs[2]), self.norm4(xs[3])]

    def _pool(self, x: paddle.Tensor) -> paddle.Tensor:
        return x[:, 1:].mean(axis=1) if self.global_pool == "avg" else x[:, 0]

    def forward_head(self, feats, pre_logits: bool = False) -> paddle.Tensor:
        if isinstance(feats, list):
            x = paddle.stack([self._pool(f) for f in feats], axis=1)  # [B, 3, C]
            x = self.aggregate(x).squeeze(1)  # [B, C]
        else:
            x = self._pool(feats)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: paddle.Tensor):
        feats = self.forward_features(x)
        if self.return_interm_layers:
            return feats
        return self.forward_head(feats)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs."""
        if self.return_interm_layers:
            raise ValueError("a backbone built with return_interm_layers=True has no classifier")
        if global_pool is not None:
            if global_pool not in ("token", "avg"):
                raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = _linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
