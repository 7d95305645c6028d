"""The compiled CPU inference path, applied to a finished CoaT from outside the model.

:mod:`paddle_model.coat` writes the model once, as the paper and the official code define it,
with Paddle's ops. Here each of its layers that Paddle runs slowly on the CPU has a fast form: a
subclass whose ``forward`` computes the same with the ops of :mod:`paddle_model.kernels` (one
op for a Linear with its bias, GELU or the block's skip connection; one for a block's MLP; the
factorised attention with its conv position encodings; the cpe; LayerNorm; the patch
embedding; the parallel blocks' resampling). A layer takes its fast form by a change of class,
which keeps its parameters, sublayers, hooks and state-dict keys.

:func:`install` (done by :func:`paddle_model.create_model`) gives a model two hooks: before a
call that is eager CPU float32 inference (eval mode, no gradients, input and parameters CPU
float32, the kernels built, the forward not converted by ``paddle.jit``) its layers take their
fast forms, and after the call (also one that raised) they get their own classes back. So
between calls the model is always coat.py's: training, gradients, another device or dtype,
graphs traced by ``paddle.jit`` (whose tracing runs no hooks) and ``COAT_PADDLE_KERNELS=0``
all run Paddle's ops, and no check sits in any forward. Swapping the classes of a CoaT's 50-120
layers costs about 30 us each way, against milliseconds per forward pass. :func:`swapped` gives
the fast forms for a block of code instead: ``export --kernels`` traces its graph inside it.

Both paths give torch's numbers within float rounding; the parity tests run both.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from .. import coat
from . import OPS, available, op

_op: dict = {}  # name -> the loaded op or None, resolved once per process (see _resolve)


def _resolve() -> None:
    if not _op:
        _op.update({name: op(name) for name in OPS})


def _dense(x: paddle.Tensor) -> paddle.Tensor:
    """``x`` with its own dense memory, as the compiled ops read it (graph values always are)."""
    return x.contiguous() if paddle.in_dynamic_mode() else x


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
    """``residual + layer(*args)``, added by the layer's last op where it has its fast form (a
    layer put into the model after the pass found its layers keeps Paddle's ops)."""
    if isinstance(layer, (FactorAttnConvRelPosEnc, Mlp)):
        return layer(*args, residual=residual)
    return residual + layer(*args)


class LayerNorm(coat.LayerNorm):
    """One pass per row (Paddle's CPU layer_norm is several times slower than torch's here)."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return _op["coat_layer_norm"](_dense(x), self.weight, self.bias, self.eps)


class Mlp(coat.Mlp):
    """With a residual, one op: the large hidden activations stay in cache."""

    def forward(self, x: paddle.Tensor, residual: paddle.Tensor | None = None) -> paddle.Tensor:
        if residual is not None and _op["coat_mlp"] is not None:
            return _op["coat_mlp"](
                _dense(x), self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, _dense(residual)
            )
        return _linear(self.fc2, _linear(self.fc1, x, gelu=True), residual=residual)  # dropouts: identities


class PatchEmbed(coat.PatchEmbed):
    """The patches as rows of one matrix product: Paddle's conv is slow here, and so is its
    transpose of tokens to an image."""

    def forward(
        self, x: paddle.Tensor, size: tuple[int, int] | None = None
    ) -> tuple[paddle.Tensor, tuple[int, int]]:
        p = self.patch_size
        if size is None:
            grid = x.shape[2:]
            rows = _op["coat_patches"](_dense(x), p)
        else:
            grid = size
            rows = _op["coat_token_patches"](_dense(x), size[0], size[1], p)
        weight = self.proj.weight.reshape([self.proj.weight.shape[0], -1])  # [out, C*p*p]
        if _op["coat_patch_linear"] is not None:  # MKL's product and the bias (deployed b8: 4-7 % faster
            # than oneDNN's)
            x = _op["coat_patch_linear"](rows, weight, self.proj.bias)
        else:
            x = paddle.matmul(rows, weight, transpose_y=True)
            if paddle.in_dynamic_mode():  # in a graph, Paddle Inference fuses the add into the product
                x = _op["coat_bias_act_"](x, self.proj.bias, False)
            else:
                x = x + self.proj.bias
        return self.norm(x), (grid[0] // p, grid[1] // p)  # [B, H*W, out]


class ConvPosEnc(coat.ConvPosEnc):
    def forward(self, x: paddle.Tensor, size: tuple[int, int]) -> paddle.Tensor:
        return _op["coat_conv_pos_enc"](_dense(x), self.proj.weight, self.proj.bias, size[0], size[1])


class FactorAttnConvRelPosEnc(coat.FactorAttnConvRelPosEnc):
    """All between the qkv and the output projection in one pass per head; the projection adds
    the block's skip connection if given."""

    def forward(
        self, x: paddle.Tensor, size: tuple[int, int], residual: paddle.Tensor | None = None
    ) -> paddle.Tensor:
        qkv = _linear(self.qkv, x)  # [B, N, 3C]
        convs = self.crpe.conv_list
        x = _op["coat_factor_attn"](
            qkv,
            [c.weight for c in convs],
            [c.bias for c in convs],
            size[0],
            size[1],
            self.num_heads,
            self.scale,
        )  # [B, N, C]
        return _linear(self.proj, x, residual=residual)  # proj_drop: identity here


class SerialBlock(coat.SerialBlock):
    """The products add the skip connections (drop paths are identities in inference)."""

    def forward(self, x: paddle.Tensor, size: tuple[int, int]) -> paddle.Tensor:
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


class ParallelBlock(coat.ParallelBlock):
    """Compiled resampling between the scales; the MLP's last product adds the residual."""

    resample = staticmethod(_resample)

    def forward(self, x1, x2, x3, x4, sizes):
        x2, x3, x4 = self.attend_and_exchange(x2, x3, x4, sizes)
        return (
            x1,
            _plus(self.mlp2, x2, self.norm22(x2)),
            _plus(self.mlp3, x3, self.norm23(x3)),
            _plus(self.mlp4, x4, self.norm24(x4)),
        )


# coat.py's layer type -> its fast form (exact types: a subclass may compute something else)
FAST_FORMS: dict[type, type] = {
    coat.LayerNorm: LayerNorm,
    coat.Mlp: Mlp,
    coat.PatchEmbed: PatchEmbed,
    coat.ConvPosEnc: ConvPosEnc,
    coat.FactorAttnConvRelPosEnc: FactorAttnConvRelPosEnc,
    coat.SerialBlock: SerialBlock,
    coat.ParallelBlock: ParallelBlock,
}

_Plan = list[tuple[nn.Layer, type, type]]  # (layer, its fast class, its own class)


def _plan(model: nn.Layer) -> _Plan:
    """Every layer of ``model`` (itself included, each shared one once) that has a fast form."""
    return [
        (layer, FAST_FORMS[type(layer)], type(layer))
        for layer in model.sublayers(include_self=True)
        if type(layer) in FAST_FORMS
    ]


def _swap(plan: _Plan, fast: bool) -> None:
    for layer, fast_class, own_class in plan:
        # object's, not Layer.__setattr__: ten times faster
        object.__setattr__(layer, "__class__", fast_class if fast else own_class)


def _cpu_float32(t: paddle.Tensor) -> bool:
    return t.dtype == paddle.float32 and t.place.is_cpu_place()


class _Pass:
    """The two hooks of :func:`install`, and the model's layers found at its first fast call.

    Calls from several threads: the layers keep their fast forms while any fast call runs (a
    count under a lock) and get their own back when the last one ends. A call of the same
    model object that needs Paddle's ops (gradients) while another thread's fast call runs
    would meet the fast forms: like ``train()``/``eval()``, the forms are the object's state.
    """

    def __init__(self, model: nn.Layer) -> None:
        params = model.parameters()
        self.sentinels = [params[0], params[-1]]  # moved by model.to(), float16(), amp.decorate
        self.plan: _Plan | None = None
        self.held = 0  # within swapped(): the classes are that block's to set
        self._unshared()

    def _unshared(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0  # fast calls running
        self.this_thread = threading.local()  # .fast: whether this thread's call is one

    def __getstate__(self) -> dict:  # deepcopy / pickle of the model: no lock, no calls running
        return {k: v for k, v in self.__dict__.items() if k not in ("lock", "calls", "this_thread")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._unshared()

    def applies(self, model: nn.Layer, inputs: tuple) -> bool:
        """Whether this call of ``model`` is eager CPU float32 inference that the ops can run."""
        if model.training or paddle.is_grad_enabled() or not paddle.in_dynamic_mode():
            return False
        if "forward" in model.__dict__:  # paddle.jit.to_static converted it: a graph, Paddle's ops
            return False
        x = inputs[0] if inputs else None
        if not isinstance(x, paddle.Tensor) or not _cpu_float32(x):
            return False
        return all(_cpu_float32(p) for p in self.sentinels) and available()

    def before(self, model: nn.Layer, inputs: tuple) -> None:
        if getattr(self.this_thread, "fast", False):  # this thread's last call raised, and this
            self.after(model, inputs, None)  # an older Paddle (3.0) has no always_call to undo it
        fast = not self.held and self.applies(model, inputs)
        self.this_thread.fast = fast
        if fast:
            with self.lock:
                if self.plan is None:
                    _resolve()
                    self.plan = _plan(model)
                self.calls += 1
                if self.calls == 1:
                    _swap(self.plan, fast=True)

    def after(self, model: nn.Layer, inputs: tuple, outputs) -> None:
        if getattr(self.this_thread, "fast", False):
            self.this_thread.fast = False
            with self.lock:
                self.calls -= 1
                if self.calls == 0:
                    _swap(self.plan, fast=False)


def install(model: nn.Layer) -> nn.Layer:
    """Give ``model`` (a CoaT) the compiled path for its eager CPU float32 inference calls, by
    the hooks described above; returns it. Installing twice changes nothing."""
    if getattr(model, "_coat_fast_pass", None) is None:
        fast_pass = _Pass(model)
        model.register_forward_pre_hook(fast_pass.before)
        try:
            model.register_forward_post_hook(fast_pass.after, always_call=True)
        except TypeError:  # Paddle 3.0: no always_call; before() undoes a call that raised
            model.register_forward_post_hook(fast_pass.after)
        model._coat_fast_pass = fast_pass
    return model


@contextlib.contextmanager
def swapped(model: nn.Layer) -> Iterator[nn.Layer]:
    """Within this block ``model``'s layers have their fast forms, whatever the call: graphs
    traced from it use the compiled ops, for the fixed input size they are traced at. Loading
    such a graph needs the ops built and registered (:func:`paddle_model.export.create_predictor`
    does both). Needs :func:`paddle_model.kernels.available`."""
    if not available():
        raise RuntimeError("the compiled kernels are not available; see the warning above")
    _resolve()
    plan = _plan(model)
    fast_pass = getattr(model, "_coat_fast_pass", None) or _Pass(model)
    fast_pass.held += 1
    _swap(plan, fast=True)
    try:
        yield model
    finally:
        _swap(plan, fast=False)
        fast_pass.held -= 1
