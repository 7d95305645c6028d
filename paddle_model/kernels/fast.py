"""The compiled CPU inference path: CoaT's layers in fast forms, chosen at construction.

:mod:`paddle_model.coat` writes the model once, as the paper and the official code define it,
with Paddle's ops. Here each of its layers that Paddle runs slowly on the CPU has a fast form: a
subclass that computes the same with the ops of :mod:`paddle_model.kernels` (one op for a Linear
with its bias, GELU or the block's skip connection; one for a block's MLP; the factorised
attention with its conv position encodings; the cpe; LayerNorm; the patch embedding; the
parallel blocks' resampling). :func:`layers` gives the classes a CoaT is built from, as timm
chooses ``norm_layer``; :func:`paddle_model.create_model` takes the choice as ``kernels``.

A fast layer decides at each call, in :meth:`Compiled.compiled`, whether its compiled op applies:
eager CPU float32 inference (eval mode, no gradients, input and parameters CPU float32) with the
ops built. Otherwise it runs its parent's forward unchanged: training, gradients, another device
or dtype, a failed build and graphs traced by ``paddle.jit`` run Paddle's ops. Nothing is swapped
or counted; the decision reads only the call's own state, so threads can share a model.

``export --kernels`` traces graphs that hold the compiled ops: :func:`trace_compiled` marks a
model's fast layers so (for the fixed input size the graph is traced at).

Both paths give torch's numbers within float rounding; the parity tests run both.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from .. import coat
from ..errors import CoatError
from . import OPS, available, op

KERNELS_ENV = "COAT_PADDLE_KERNELS"  # "0": kernels=None means Paddle's ops only

_op: dict = {}  # name -> the loaded op or None, resolved once per process (see _ops)


def _ops() -> bool:
    """Whether the compiled ops are built and loaded; builds them on the first call."""
    if not _op:
        if not available():
            return False
        _op.update({name: op(name) for name in OPS})  # one update: other threads see all or none
    return True


def _cpu_float32(t: paddle.Tensor) -> bool:
    return t.dtype == paddle.float32 and t.place.is_cpu_place()


def _dense(x: paddle.Tensor) -> paddle.Tensor:
    """``x`` with its own dense memory, as the compiled ops read it (graph values always are)."""
    return x.contiguous() if paddle.in_dynamic_mode() else x


class Compiled:
    """What every fast layer shares: the one rule for whether its compiled op runs this call."""

    in_graphs = False  # True (set by trace_compiled) on layers whose traced graphs hold the ops

    def _probe(self) -> paddle.Tensor:
        """One of the layer's parameters: its device and dtype are the layer's."""
        raise NotImplementedError

    def compiled(self, x: paddle.Tensor) -> bool:
        """Whether this call, with input ``x``, runs the compiled op: eager CPU float32
        inference with the ops built; in a graph being traced, whether it was asked for."""
        if not paddle.in_dynamic_mode():
            return self.in_graphs
        return (
            not self.training
            and not paddle.is_grad_enabled()
            and _cpu_float32(x)
            and _cpu_float32(self._probe())
            and _ops()
        )


def _linear(
    layer: nn.Linear, x: paddle.Tensor, gelu: bool = False, residual: paddle.Tensor | None = None
) -> paddle.Tensor:
    """``layer(x)``, then GELU if asked, plus ``residual`` if given (not both).

    With Paddle's MKL, one op does it all (MKL's product, then one pass); without it, eager runs
    still take the bias and GELU in one pass after Paddle's product, graphs Paddle's ops.
    """
    if layer.bias is not None:
        if _op["coat_linear"] is not None:  # the MKL ops come all together or not at all
            if residual is None:
                return _op["coat_linear"](_dense(x), layer.weight, layer.bias, gelu)
            return _op["coat_linear_add"](_dense(x), layer.weight, layer.bias, _dense(residual))
        if paddle.in_dynamic_mode():  # in place on the product
            x = _op["coat_bias_act_"](paddle.matmul(x, layer.weight), layer.bias, gelu)
            return x if residual is None else x.add_(residual)
    x = layer(x)
    x = F.gelu(x) if gelu else x
    return x if residual is None else residual + x


def _plus(layer: nn.Layer, residual: paddle.Tensor, *args) -> paddle.Tensor:
    """``residual + layer(*args)`` within a block that runs compiled: added by the layer's last
    op where it is a fast form (a layer put into the model later keeps its own forward)."""
    if isinstance(layer, (FactorAttnConvRelPosEnc, Mlp)):
        return layer.forward_add(residual, *args)
    return residual + layer(*args)


class LayerNorm(Compiled, coat.LayerNorm):
    """One pass per row (Paddle's CPU layer_norm is several times slower than torch's here)."""

    def _probe(self) -> paddle.Tensor:
        return self.weight

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if not self.compiled(x):
            return super().forward(x)
        return _op["coat_layer_norm"](_dense(x), self.weight, self.bias, self.eps)


class Mlp(Compiled, coat.Mlp):
    """The two Linear steps with bias and GELU fused; :meth:`forward_add` with the block's skip
    connection in one op, so that the large hidden activations stay in cache."""

    def _probe(self) -> paddle.Tensor:
        return self.fc1.weight

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if not self.compiled(x):
            return super().forward(x)
        return _linear(self.fc2, _linear(self.fc1, x, gelu=True))  # dropouts: identities

    def forward_add(self, residual: paddle.Tensor, x: paddle.Tensor) -> paddle.Tensor:
        """``residual + self(x)``, for a block that runs compiled (the caller decided)."""
        if _op["coat_mlp"] is not None:
            return _op["coat_mlp"](
                _dense(x), self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, _dense(residual)
            )
        return _linear(self.fc2, _linear(self.fc1, x, gelu=True), residual=residual)


class PatchEmbed(Compiled, coat.PatchEmbed):
    """The patches as rows of one matrix product: Paddle's conv is slow here, and so is its
    transpose of tokens to an image."""

    def _probe(self) -> paddle.Tensor:
        return self.proj.weight

    def forward(
        self, x: paddle.Tensor, size: tuple[int, int] | None = None
    ) -> tuple[paddle.Tensor, tuple[int, int]]:
        if not self.compiled(x):
            return super().forward(x, size)
        p = self.patch_size
        if size is None:
            grid = x.shape[2:]
            rows = _op["coat_patches"](_dense(x), p)
        else:
            grid = size
            rows = _op["coat_token_patches"](_dense(x), size[0], size[1], p)
        weight = self.proj.weight.reshape([self.proj.weight.shape[0], -1])  # [out, C*p*p]
        if _op["coat_patch_linear"] is not None:  # MKL's product and the bias in one op
            x = _op["coat_patch_linear"](rows, weight, self.proj.bias)
        else:
            x = paddle.matmul(rows, weight, transpose_y=True)
            if paddle.in_dynamic_mode():  # in a graph, Paddle Inference fuses the add into the product
                x = _op["coat_bias_act_"](x, self.proj.bias, False)
            else:
                x = x + self.proj.bias
        return self.norm(x), (grid[0] // p, grid[1] // p)  # [B, H*W, out]


class ConvPosEnc(Compiled, coat.ConvPosEnc):
    def _probe(self) -> paddle.Tensor:
        return self.proj.weight

    def forward(self, x: paddle.Tensor, size: tuple[int, int]) -> paddle.Tensor:
        if not self.compiled(x):
            return super().forward(x, size)
        return _op["coat_conv_pos_enc"](_dense(x), self.proj.weight, self.proj.bias, size[0], size[1])


class FactorAttnConvRelPosEnc(Compiled, coat.FactorAttnConvRelPosEnc):
    """All between the qkv and the output projection in one pass per head; :meth:`forward_add`
    adds the block's skip connection in the projection's op."""

    def _probe(self) -> paddle.Tensor:
        return self.qkv.weight

    def forward(self, x: paddle.Tensor, size: tuple[int, int]) -> paddle.Tensor:
        if not self.compiled(x):
            return super().forward(x, size)
        return _linear(self.proj, self._core(x, size))  # proj_drop: identity here

    def forward_add(self, residual: paddle.Tensor, x: paddle.Tensor, size: tuple[int, int]) -> paddle.Tensor:
        """``residual + self(x, size)``, for a block that runs compiled (the caller decided)."""
        return _linear(self.proj, self._core(x, size), residual=residual)

    def _core(self, x: paddle.Tensor, size: tuple[int, int]) -> paddle.Tensor:
        qkv = _linear(self.qkv, x)  # [B, N, 3C]
        convs = self.crpe.conv_list
        return _op["coat_factor_attn"](
            qkv,
            [c.weight for c in convs],
            [c.bias for c in convs],
            size[0],
            size[1],
            self.num_heads,
            self.scale,
        )  # [B, N, C]


class SerialBlock(Compiled, coat.SerialBlock):
    """The products add the skip connections (drop paths are identities in inference)."""

    def _probe(self) -> paddle.Tensor:
        return self.norm1.weight

    def forward(self, x: paddle.Tensor, size: tuple[int, int]) -> paddle.Tensor:
        if not self.compiled(x):
            return super().forward(x, size)
        x = self.cpe(x, size)
        x = _plus(self.factoratt_crpe, x, self.norm1(x), size)
        return _plus(self.mlp, x, self.norm2(x))


@lru_cache(maxsize=256)
def _tap_arrays(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`paddle_model.coat._bilinear_matrix` as (source indices, weights), each
    [n_out, 2]: its two taps per row."""
    m = coat._bilinear_matrix(n_in, n_out)
    idx = np.zeros((n_out, 2), np.int64)
    w = np.zeros((n_out, 2), np.float32)
    for row in range(n_out):
        taps = np.flatnonzero(m[row])
        idx[row, : len(taps)], w[row, : len(taps)] = taps, m[row, taps]
    return idx, w


@lru_cache(maxsize=256)
def _taps(n_in: int, n_out: int) -> tuple[paddle.Tensor, paddle.Tensor]:
    """:func:`_tap_arrays` as the tensors the op takes, made once per size pair (eager runs
    only: a traced graph holds its own constants)."""
    return tuple(paddle.to_tensor(a, place=paddle.CPUPlace()) for a in _tap_arrays(n_in, n_out))


def _resample(x: paddle.Tensor, size: tuple[int, int], target: tuple[int, int]) -> paddle.Tensor:
    """:func:`paddle_model.coat.resample_tokens` by two taps per axis."""
    (H, W), (Ho, Wo) = size, target
    if paddle.in_dynamic_mode():
        taps = _taps(H, Ho) + _taps(W, Wo)
    else:  # a graph traced at a fixed size: the taps become its constants
        taps = [paddle.to_tensor(a) for a in _tap_arrays(H, Ho) + _tap_arrays(W, Wo)]
    return _op["coat_resample"](_dense(x), *taps, H, W)


class ParallelBlock(Compiled, coat.ParallelBlock):
    """Compiled resampling between the scales; the MLP's last product adds the residual."""

    def _probe(self) -> paddle.Tensor:
        return self.norm12.weight

    def resample(self, x: paddle.Tensor, size: tuple[int, int], target: tuple[int, int]) -> paddle.Tensor:
        if not self.compiled(x):
            return coat.resample_tokens(x, size, target)
        return _resample(x, size, target)

    def forward(self, x1, x2, x3, x4, sizes):
        if not self.compiled(x2):
            return super().forward(x1, x2, x3, x4, sizes)
        x2, x3, x4 = self.attend_and_exchange(x2, x3, x4, sizes)
        return (
            x1,
            _plus(self.mlp2, x2, self.norm22(x2)),
            _plus(self.mlp3, x3, self.norm23(x3)),
            _plus(self.mlp4, x4, self.norm24(x4)),
        )


FAST_LAYERS = coat.CoatLayers(
    LayerNorm, Mlp, PatchEmbed, ConvPosEnc, FactorAttnConvRelPosEnc, SerialBlock, ParallelBlock
)


def layers(kernels: bool | None = None) -> coat.CoatLayers:
    """The layer classes to build a CoaT from.

    ``kernels``: None uses the compiled ops where they apply (not with ``COAT_PADDLE_KERNELS=0``;
    a failed build, found at the first inference call, falls back to Paddle's ops with one
    warning); True requires them (builds them now, :class:`CoatError` if they cannot be);
    False gives coat.py's layers, Paddle's ops only.
    """
    if kernels is None:
        return coat.PADDLE_LAYERS if os.environ.get(KERNELS_ENV, "1") == "0" else FAST_LAYERS
    if kernels is True:
        if not _ops():
            raise CoatError(
                "kernels=True, but the compiled CPU kernels are not available here (see the warning "
                f"above, or {KERNELS_ENV}=0): install a C++ compiler, or build with kernels=None or False"
            )
        return FAST_LAYERS
    if kernels is False:
        return coat.PADDLE_LAYERS
    raise ValueError(f"kernels must be None, True or False, not {kernels!r}")


def trace_compiled(model: nn.Layer) -> nn.Layer:
    """Mark ``model``'s fast layers so that graphs traced from it (``paddle.jit``) hold the
    compiled ops, for the fixed input size they are traced at; eager calls are unchanged.
    Loading such a graph needs the ops built and registered
    (:func:`paddle_model.export.create_predictor` does both). Returns ``model``.
    """
    if not _ops():
        raise CoatError("the compiled kernels are not available; see the warning above")
    marked = [layer for layer in model.sublayers(include_self=True) if isinstance(layer, Compiled)]
    if not marked:
        raise CoatError("the model has no fast layers to trace: build it with kernels=True")
    for layer in marked:
        layer.in_graphs = True
    return model
