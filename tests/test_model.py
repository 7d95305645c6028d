"""The Paddle model's own behaviour: any input size, backbone features, strict loading, training."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch
import torch.nn.functional as F

import paddle_model
from paddle_model.coat import _bilinear_matrix, resample_tokens
from paddle_model.errors import WeightsError


@pytest.mark.parametrize(
    "n_in, n_out",
    [
        (7, 14),
        (14, 7),
        (7, 28),
        (28, 7),
        (14, 29),
        (57, 28),
        (28, 57),
        (2, 1),
        (1, 2),
        (3, 1),
        (1, 1),
        (5, 3),
    ],
)
def test_resampling_matches_torch_bilinear_to_a_size(n_in, n_out):
    rng = np.random.default_rng(0)
    h_in, w_in, h_out, w_out = n_in, n_in + 1, n_out, max(n_out - 1, 1)
    img = rng.standard_normal((2, 5, h_in, w_in)).astype(np.float32)
    expected = F.interpolate(
        torch.from_numpy(img), size=(h_out, w_out), mode="bilinear", align_corners=False
    ).numpy()
    tokens = np.concatenate(
        [np.zeros((2, 1, 5), np.float32), img.reshape(2, 5, -1).transpose(0, 2, 1)], axis=1
    )
    out = resample_tokens(paddle.to_tensor(tokens), (h_in, w_in), (h_out, w_out)).numpy()
    got = out[:, 1:].transpose(0, 2, 1).reshape(2, 5, h_out, w_out)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert _bilinear_matrix(n_in, n_out).sum(1) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "name, size",
    [
        ("coat_tiny", (230, 230)),
        ("coat_tiny", (200, 296)),
        ("coat_lite_tiny", (240, 320)),
        ("coat_tiny", (36, 36)),
    ],
)
def test_runs_at_any_input_size(name, size):
    model = paddle_model.create_model(name, num_classes=10)
    model.eval()
    x = paddle.randn([1, 3, *size])
    assert model(x).shape == [1, 10]


def test_backbone_returns_requested_nchw_maps(tmp_path):
    model = paddle_model.create_model(
        "coat_mini", return_interm_layers=True, out_features=["x2_nocls", "x4_nocls"]
    )
    feats = model(paddle.randn([2, 3, 224, 256]))
    assert list(feats) == ["x2_nocls", "x4_nocls"]
    assert feats["x2_nocls"].shape == [2, 216, 28, 32]
    assert feats["x4_nocls"].shape == [2, 216, 7, 8]


def test_backbone_loads_classifier_weights_ignoring_the_head(tmp_path):
    from converter.writers import write_pdparams

    full = paddle_model.create_model("coat_lite_tiny")
    path = tmp_path / "full.pdparams"
    write_pdparams({k: v.numpy() for k, v in full.state_dict().items()}, path)
    backbone = paddle_model.create_model("coat_lite_tiny", pretrained=path, return_interm_layers=True)
    np.testing.assert_array_equal(backbone.cls_token3.numpy(), full.cls_token3.numpy())


def _saved(model, tmp_path, edit=None):
    from converter.writers import write_pdparams

    state = {k: v.numpy() for k, v in model.state_dict().items()}
    if edit:
        edit(state)
    path = tmp_path / "w.pdparams"
    write_pdparams(state, path)
    return path


def test_loading_refuses_a_missing_key(tmp_path):
    path = _saved(
        paddle_model.create_model("coat_lite_tiny"), tmp_path, lambda s: s.pop("serial_blocks2.1.norm2.bias")
    )
    with pytest.raises(WeightsError, match=r"1 missing \(serial_blocks2.1.norm2.bias\)"):
        paddle_model.create_model("coat_lite_tiny", pretrained=path)


def test_loading_refuses_a_misshaped_key(tmp_path):
    def edit(s):
        s["cls_token2"] = np.zeros((1, 1, 7), np.float32)

    path = _saved(paddle_model.create_model("coat_lite_tiny"), tmp_path, edit)
    with pytest.raises(WeightsError, match=r"cls_token2 has shape \[1, 1, 7\]"):
        paddle_model.create_model("coat_lite_tiny", pretrained=path)


def test_loading_refuses_untied_aliases(tmp_path):
    def edit(s):
        s["serial_blocks1.1.cpe.proj.bias"] = s["cpe1.proj.bias"] + 1

    path = _saved(paddle_model.create_model("coat_lite_tiny"), tmp_path, edit)
    with pytest.raises(WeightsError, match="shared tensor"):
        paddle_model.create_model("coat_lite_tiny", pretrained=path)


def test_loading_never_runs_pickle_code(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle

    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps({"cls_token1": Payload()}))
    with pytest.raises(WeightsError, match=r"asks for (builtins|io)\.open, which is not plain tensor data"):
        paddle_model.create_model("coat_lite_tiny", pretrained=path)
    assert not marker.exists()


def test_another_num_classes_keeps_a_fresh_head(tmp_path):
    path = _saved(paddle_model.create_model("coat_lite_tiny"), tmp_path)
    model = paddle_model.create_model("coat_lite_tiny", pretrained=path, num_classes=10)
    assert model.head.weight.shape == [320, 10]


def test_drop_path_acts_in_training_only():
    paddle.seed(0)
    model = paddle_model.create_model("coat_lite_tiny", drop_path_rate=0.5, num_classes=10)
    x = paddle.randn([4, 3, 64, 64])
    model.train()
    a, b = model(x), model(x)
    assert not np.allclose(a.numpy(), b.numpy())
    model.eval()
    np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())


def test_every_parameter_gets_a_gradient():
    model = paddle_model.create_model("coat_tiny", num_classes=10)
    model.train()
    loss = F_cross_entropy(model(paddle.randn([2, 3, 64, 64])), paddle.to_tensor([1, 2]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def F_cross_entropy(logits, labels):
    return paddle.nn.functional.cross_entropy(logits, labels)


def test_weight_init_follows_timm():
    paddle.seed(0)
    model = paddle_model.create_model("coat_lite_tiny")
    qkv = model.serial_blocks1[0].factoratt_crpe.qkv
    assert abs(float(qkv.weight.std()) - 0.02) < 0.002
    assert float(qkv.bias.abs().max()) == 0.0
    assert float(model.serial_blocks1[0].norm1.weight.min()) == 1.0
    conv = model.cpe1.proj.weight  # torch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in 9
    assert float(conv.abs().max()) <= 1 / 3


@pytest.mark.parametrize("n_in, n_out", [(7, 14), (57, 28), (28, 57), (2, 1), (1, 3), (15, 8)])
def test_static_graph_resampling_weights_equal_the_eager_ones(n_in, n_out):
    from paddle_model.coat import _bilinear_matrix_ops

    np.testing.assert_array_equal(_bilinear_matrix_ops(n_in, n_out).numpy(), _bilinear_matrix(n_in, n_out))


def test_layer_norm_epsilon_is_the_public_eps_on_both_paths():
    """Setting ``eps`` changes what the LayerNorm computes, with Paddle's op and with the
    compiled one; rows of small variance, where epsilon matters."""
    from paddle_model.coat import LayerNorm
    from paddle_model.kernels import fast

    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32) * 1e-2
    norm, fast_norm = LayerNorm(16, 1e-6), fast.LayerNorm(16, 1e-6)
    norm.eps = fast_norm.eps = 1e-3
    expected = F.layer_norm(torch.from_numpy(x), (16,), eps=1e-3).numpy()
    fast_norm.eval()
    with paddle.no_grad():
        own = norm(paddle.to_tensor(x)).numpy()
        assert fast_norm.compiled(paddle.to_tensor(x))
        compiled = fast_norm(paddle.to_tensor(x)).numpy()
    for got in (own, compiled):
        assert float(np.abs(got - expected).max()) <= 1e-5 * float(np.abs(expected).max())
    assert float(np.abs(expected - F.layer_norm(torch.from_numpy(x), (16,), eps=1e-6).numpy()).max()) > 0.1
