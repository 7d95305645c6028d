"""The compiled path as a layer choice made at construction, and the inputs the model refuses."""

from __future__ import annotations

import inspect
import threading

import numpy as np
import paddle
import pytest

import paddle_model
from paddle_model import coat, kernels
from paddle_model.errors import CoatError, InputError
from paddle_model.kernels import fast
from paddle_model.variants import VARIANTS

from .conftest import run_python
from .test_kernels import counted_ops


def _twins(name: str = "coat_tiny", **kwargs):
    """A model built with the default layers and one with Paddle's ops only, same weights."""
    paddle.seed(0)
    model = paddle_model.create_model(name, num_classes=10, **kwargs)
    twin = paddle_model.create_model(name, num_classes=10, kernels=False, **kwargs)
    twin.set_state_dict(model.state_dict())
    return model, twin


def _batch(seed: int, size: int = 64) -> paddle.Tensor:
    return paddle.to_tensor(
        np.random.default_rng(seed).standard_normal((2, 3, size, size)).astype(np.float32)
    )


def _close(got: np.ndarray, expected: np.ndarray, rtol: float = 1e-5) -> bool:
    return float(np.abs(got - expected).max()) <= rtol * float(np.abs(expected).max())


def test_the_kernels_argument_chooses_the_layer_classes_and_keeps_the_keys():
    model, twin = _twins()
    assert type(model.serial_blocks1[0]) is fast.SerialBlock and type(model.norm4) is fast.LayerNorm
    assert type(model.parallel_blocks[0].mlp2) is fast.Mlp and type(model.patch_embed2.norm) is fast.LayerNorm
    assert type(twin.serial_blocks1[0]) is coat.SerialBlock and type(twin.norm4) is coat.LayerNorm
    assert not any(isinstance(layer, fast.Compiled) for layer in twin.sublayers())
    assert list(model.state_dict()) == list(twin.state_dict())


def test_coat_built_directly_takes_the_same_choice():
    model = coat.CoaT(VARIANTS["coat_lite_tiny"], layers=fast.layers(kernels=None))
    assert type(model.serial_blocks4[0].mlp) is fast.Mlp
    assert type(coat.CoaT(VARIANTS["coat_lite_tiny"]).serial_blocks4[0].mlp) is coat.Mlp


def test_coat_paddle_kernels_0_means_paddles_layers(monkeypatch):
    monkeypatch.setenv("COAT_PADDLE_KERNELS", "0")
    assert fast.layers(None) is coat.PADDLE_LAYERS
    assert type(paddle_model.create_model("coat_lite_tiny").norm4) is coat.LayerNorm


def test_kernels_true_where_they_cannot_be_built_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(fast, "_ops", lambda: False)
    with pytest.raises(CoatError, match="kernels=True, but the compiled CPU kernels are not available"):
        paddle_model.create_model("coat_lite_tiny", kernels=True)
    with pytest.raises(ValueError, match="kernels must be None, True or False"):
        fast.layers("yes")


def test_fast_layers_keep_their_parents_forward_signatures():
    for parent, child in zip(
        (getattr(coat.PADDLE_LAYERS, f) for f in coat.CoatLayers.__dataclass_fields__),
        (getattr(fast.FAST_LAYERS, f) for f in coat.CoatLayers.__dataclass_fields__),
    ):
        assert issubclass(child, parent)
        assert inspect.signature(child.forward) == inspect.signature(parent.forward), child


def test_a_layer_put_in_later_keeps_paddles_ops(monkeypatch):
    """A plain coat.py Mlp put into a fast block: the block's compiled path still calls it as a
    layer (its own forward, Paddle's ops), and the numbers stay Paddle's."""
    model, twin = _twins("coat_lite_tiny")
    plain = coat.Mlp(64, 512)
    plain.set_state_dict(model.serial_blocks1[0].mlp.state_dict())
    model.serial_blocks1[0].mlp = plain
    model.eval()
    twin.eval()
    called = []
    plain.register_forward_post_hook(lambda layer, inputs, out: called.append(1))
    x = _batch(1)
    with paddle.no_grad():
        assert _close(model(x).numpy(), twin(x).numpy())
    assert called == [1]


def _train_step(model, optimizer, x, labels) -> dict[str, np.ndarray]:
    loss = paddle.nn.functional.cross_entropy(model(x), labels)
    loss.backward()
    grads = {name: p.grad.numpy() for name, p in model.named_parameters()}
    optimizer.step()
    optimizer.clear_grad()
    return grads


def test_training_and_inference_alternate_on_one_model(monkeypatch):
    """train() steps and eval() inference on one object, in turn: each inference equals the
    Paddle-ops twin's (and ran the compiled ops), each step's gradients equal the twin's."""
    model, twin = _twins("coat_tiny")
    opts = [paddle.optimizer.SGD(0.05, parameters=m.parameters()) for m in (model, twin)]
    labels = paddle.to_tensor([1, 7])
    calls = counted_ops(monkeypatch)
    for step in range(2):
        for m in (model, twin):
            m.train()
        x = _batch(10 + step)
        grads, expected = (_train_step(m, o, x, labels) for m, o in zip((model, twin), opts))
        assert sum(calls.values()) == 0, calls  # training: Paddle's ops
        assert grads.keys() == expected.keys()
        for name, g in expected.items():
            assert _close(grads[name], g, rtol=1e-6), name
        for m in (model, twin):
            m.eval()
        with paddle.no_grad():
            got, want = model(x).numpy(), twin(x).numpy()
        assert calls["coat_factor_attn"] > 0 and _close(got, want)
        calls.update(dict.fromkeys(calls, 0))


def test_training_and_inference_from_two_threads_at_once():
    """One thread trains (gradients on, optimizer steps of a zero learning rate, so the weights
    stay put) while another infers without gradients, on the same model object: the inference
    thread's results equal the Paddle-ops twin's, the training thread's gradients the twin's."""
    model, twin = _twins("coat_lite_tiny")
    model.eval()  # dropout and drop path are zero: training steps are the same in eval mode
    twin.eval()
    labels = paddle.to_tensor([2, 5])
    inputs = [_batch(20 + i) for i in range(3)]
    with paddle.no_grad():
        expected_out = [twin(x).numpy() for x in inputs]
    twin_opt = paddle.optimizer.SGD(0.0, parameters=twin.parameters())
    expected_grads = [_train_step(twin, twin_opt, x, labels) for x in inputs]
    opt = paddle.optimizer.SGD(0.0, parameters=model.parameters())
    outs, grads, errors = [], [], []

    def guarded(work):
        def run():
            try:
                work()
            except Exception as e:  # reported below: a thread's exception is otherwise lost
                errors.append(e)

        return run

    def infer():
        with paddle.no_grad():
            for _ in range(2):
                outs.extend(model(x).numpy() for x in inputs)

    def train():
        grads.extend(_train_step(model, opt, x, labels) for x in inputs)

    threads = [threading.Thread(target=guarded(infer)), threading.Thread(target=guarded(train))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(outs) == 6 and all(_close(got, expected_out[i % 3]) for i, got in enumerate(outs))
    assert len(grads) == 3
    for got, want in zip(grads, expected_grads):
        for name, g in want.items():
            assert _close(got[name], g, rtol=1e-6), name


@pytest.mark.parametrize("name, minimum", [("coat_tiny", 32), ("coat_lite_medium_384", 32)])
def test_the_minimum_input_size_follows_the_patch_sizes(name, minimum):
    variant = VARIANTS[name]
    assert variant.min_input_size == minimum == variant.patch_size * 8
    assert paddle_model.create_model(name, kernels=False).min_input_size == minimum


@pytest.mark.parametrize("kernels_on", [None, False])
@pytest.mark.parametrize("size", [(64, 16), (16, 64), (31, 31), (8, 8)])
def test_inputs_under_the_minimum_are_refused_on_both_paths(kernels_on, size):
    model = paddle_model.create_model("coat_tiny", num_classes=10, kernels=kernels_on)
    model.eval()
    with (
        paddle.no_grad(),
        pytest.raises(InputError, match=rf"at least 32x32 pixels, got {size[0]}x{size[1]}"),
    ):
        model(paddle.zeros([1, 3, *size]))


def test_the_smallest_input_runs_and_repeats_exactly():
    """At the minimum every stage has one token per side; the compiled ops write every value
    (two calls agree to the bit) and match Paddle's ops."""
    model, twin = _twins("coat_tiny")
    model.eval()
    twin.eval()
    x = _batch(3, size=32)
    with paddle.no_grad():
        a, b, want = model(x).numpy(), model(x).numpy(), twin(x).numpy()
    assert np.array_equal(a, b) and np.isfinite(a).all() and _close(a, want)


@pytest.mark.parametrize("kernels_on", [None, False])
def test_a_wrong_channel_count_or_rank_is_refused_before_any_op(kernels_on, monkeypatch):
    model = paddle_model.create_model("coat_lite_tiny", num_classes=10, kernels=kernels_on)
    model.eval()
    calls = counted_ops(monkeypatch)
    with paddle.no_grad():
        with pytest.raises(
            InputError, match=r"takes images with 3 channels, got 1 \(shape \[2, 1, 64, 64\]\)"
        ):
            model(paddle.zeros([2, 1, 64, 64]))
        with pytest.raises(InputError, match=r"4-D batch of images \[B, 3, H, W\], got shape \[3, 64, 64\]"):
            model(paddle.zeros([3, 64, 64]))
    assert sum(calls.values()) == 0


@pytest.mark.parametrize(
    "name, args",
    [
        (
            "coat_factor_attn",
            lambda: (
                paddle.zeros([1, 1, 72]),
                [paddle.zeros([24, 1, 3, 3])],
                [paddle.zeros([24])],
                0,
                5,
                8,
                0.5,
            ),
        ),
        (
            "coat_conv_pos_enc",
            lambda: (paddle.zeros([1, 1, 8]), paddle.zeros([8, 1, 3, 3]), paddle.zeros([8]), 4, 0),
        ),
        ("coat_patches", lambda: (paddle.zeros([1, 3, 1, 8]), 2)),
        ("coat_token_patches", lambda: (paddle.zeros([1, 2, 8]), 1, 1, 2)),
    ],
)
def test_the_compiled_ops_refuse_a_grid_without_tokens(name, args):
    """Called directly with a zero side (or one under the patch size), an op raises instead of
    returning memory it never wrote."""
    with pytest.raises(OSError, match="at least"):
        kernels.op(name)(*args())


def test_the_compiled_resampling_refuses_taps_outside_the_image():
    x = paddle.zeros([1, 1 + 2 * 2, 4])
    idx = paddle.to_tensor(np.array([[0, 5]], np.int64))  # row 5 of a 2-row image
    w = paddle.to_tensor(np.array([[0.5, 0.5]], np.float32))
    ok = paddle.to_tensor(np.array([[0, 1]], np.int64))
    with pytest.raises(OSError, match="a row tap outside the image"):
        kernels.op("coat_resample")(x, idx, w, ok, w, 2, 2)


def test_creating_a_model_prints_nothing():
    """Paddle's import warns about ccache; paddle_model silences that one warning for every
    command, so a fresh process that builds and runs a model prints nothing at all."""
    code = (
        "import paddle_model, paddle\n"
        "m = paddle_model.create_model('coat_lite_tiny', num_classes=3); m.eval()\n"
        "with paddle.no_grad():\n"
        "    m(paddle.zeros([1, 3, 32, 32]))\n"
    )
    done = run_python("-c", code)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stderr


FORK = """
import json, os, sys, time
import torch  # first: the ops' OpenMP regions then reach torch's GNU OpenMP
import numpy as np, paddle, paddle_model
model = paddle_model.create_model("coat_lite_tiny", num_classes=10); model.eval()
x = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype("float32"))
with paddle.no_grad():
    parent = model(x).numpy()  # the parent's OpenMP threads now exist
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    with paddle.no_grad():
        child = model(x).numpy()
    os.write(w, child.tobytes())
    os._exit(0)
os.close(w)
os.set_blocking(r, False)
data, deadline = b"", time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        chunk = os.read(r, 1 << 16)
    except BlockingIOError:
        time.sleep(0.05)
        continue
    if not chunk:
        break
    data += chunk
if os.waitpid(pid, os.WNOHANG)[0] == 0:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    print(json.dumps({"finished": False}))
    sys.exit(0)
child = np.frombuffer(data, np.float32).reshape(parent.shape)
print(json.dumps({"finished": True, "rel": float(np.abs(child - parent).max() / np.abs(parent).max())}))
"""


def test_a_forked_child_runs_the_compiled_ops():
    """A DataLoader worker forks: with torch imported first and one inference run in the
    parent, the child's inference finishes (within a minute; it used to hang in GNU OpenMP)
    and equals the parent's within float rounding (the child computes on one thread)."""
    import json

    done = run_python("-c", FORK, timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["finished"], "the forked child hung in the compiled ops"
    assert got["rel"] <= 2e-6, got
