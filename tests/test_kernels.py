"""The compiled kernels: built here, equal to torch's or to the Paddle ops they replace, optional."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest
import torch
import torch.nn.functional as F

import paddle_model
from paddle_model import coat, export, kernels
from paddle_model.kernels import fast

from .conftest import ROOT, run_python


def test_a_first_build_prints_nothing(tmp_path):
    """The build runs g++ in a child process and Paddle prints and logs around it; none of it
    may reach a command's output (a --json result must stay parseable), whether stdout is the
    file descriptor or a Python object standing in for it (as under pytest's capsys). stderr
    gets one line saying that it compiles."""
    code = (
        "import io, sys\n"
        "import paddle_model.kernels as k\n"
        "sys.stdout = buf = io.StringIO()\n"
        "built = k.available()\n"
        "sys.stdout = sys.__stdout__\n"
        "print(built, repr(buf.getvalue()))\n"
    )
    env = {**os.environ, "COAT_PADDLE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True ''\n"
    noise = [
        line
        for line in done.stderr.splitlines()
        if "ccache" not in line and line.strip() and not line.strip().startswith("warnings.warn")
    ]  # Paddle's own import warning
    assert len(noise) == 1, noise  # the one line that says why the first call takes 20 s
    assert noise[0].startswith("coat_paddle: compiling the CPU kernels for this machine")
    assert str(tmp_path / "cache") in noise[0]


def test_kernels_build_on_this_machine():
    """Every op of the table, the MKL ones too (this machine's Paddle is an x86 wheel)."""
    for name in kernels.OPS:
        assert kernels.op(name) is not None, f"{name} failed to build"


def _declared_ops() -> dict[str, tuple[tuple[str, ...], bool]]:
    """fused_ops.cc's PD_BUILD_OPs, read from the source: name -> (its inputs and attributes,
    lower case; whether it sits inside an ``#ifdef COAT_MKL`` block)."""
    lines = (ROOT / "paddle_model" / "kernels" / "fused_ops.cc").read_text().splitlines()
    declared, blocks = {}, []
    for i, line in enumerate(lines):
        if line.startswith("#if"):
            blocks.append(line.split()[:2] == ["#ifdef", "COAT_MKL"])
        elif line.startswith("#endif"):
            blocks.pop()
        elif line.startswith("PD_BUILD_OP("):
            end = next(k for k in range(i, len(lines)) if "SetKernelFn" in lines[k])
            chunk = " ".join(lines[i : end + 1])
            inputs = re.search(r"\.Inputs\(\{(.*?)\}\)", chunk).group(1)
            attrs = re.search(r"\.Attrs\(\{(.*?)\}\)", chunk)
            args = re.findall(r'"(\w+)"', inputs) + (re.findall(r'"(\w+):', attrs.group(1)) if attrs else [])
            name = line[len("PD_BUILD_OP(") : line.index(")")]
            declared[name] = (tuple(a.lower() for a in args), any(blocks))
    return declared


def test_the_op_table_is_what_fused_ops_cc_builds():
    """kernels.OPS is the one list of the compiled ops: the .cc file declares exactly those,
    with those arguments, and builds the ``mkl`` ones only with Paddle's MKL."""
    declared = _declared_ops()
    assert sorted(declared) == sorted(kernels.OPS)
    for name, spec in kernels.OPS.items():
        args, mkl = declared[name]
        assert tuple(a.replace("_", "") for a in args) == tuple(a.replace("_", "") for a in spec.args), name
        assert mkl == spec.mkl, name


def test_an_unknown_op_name_is_refused():
    with pytest.raises(KeyError, match="'coat_gelu' is not one of the compiled ops"):
        kernels.op("coat_gelu")


@pytest.mark.parametrize(
    "batch, channels, height, width, kernel",
    [
        (1, 152, 56, 59, 3),
        (2, 48, 28, 28, 5),
        (2, 60, 14, 9, 7),
        (3, 8, 1, 1, 7),
        (1, 16, 2, 5, 7),
    ],
)
def test_conv_pos_enc_equals_torch(batch, channels, height, width, kernel):
    """Tokens plus torch's depthwise convolution of their image part; CLS untouched."""
    rng = np.random.default_rng(kernel)
    x = rng.standard_normal((batch, 1 + height * width, channels)).astype(np.float32)
    w = rng.standard_normal((channels, 1, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    img = torch.from_numpy(x[:, 1:]).transpose(1, 2).reshape(batch, channels, height, width)
    conv = F.conv2d(img, torch.from_numpy(w), torch.from_numpy(b), padding=kernel // 2, groups=channels)
    expected = x.copy()
    expected[:, 1:] += conv.flatten(2).transpose(1, 2).numpy()
    got = kernels.op("coat_conv_pos_enc")(
        paddle.to_tensor(x), paddle.to_tensor(w), paddle.to_tensor(b), height, width
    ).numpy()
    assert np.array_equal(got[:, 0], x[:, 0])
    assert float(np.abs(got - expected).max()) <= 1e-6 * float(np.abs(expected).max())


def test_model_gives_the_same_outputs_with_and_without_kernels_and_threads(tmp_path):
    """COAT_PADDLE_KERNELS=0 (as where no compiler exists) falls back to Paddle's own ops; the
    kernels split work over MKL_NUM_THREADS threads by images (batch 3) or within one image."""
    code = (
        "import sys, numpy as np, paddle, paddle_model\n"
        "paddle.seed(0)\n"
        "m = paddle_model.create_model('coat_tiny', num_classes=10); m.eval()\n"
        "x = np.random.default_rng(0).standard_normal((4, 3, 96, 96)).astype('float32')\n"
        "with paddle.no_grad():\n"
        "    out = [m(paddle.to_tensor(x[:1])).numpy(), m(paddle.to_tensor(x[1:])).numpy()]\n"
        "np.save(sys.argv[1], np.concatenate(out))\n"
    )
    outputs = {}
    for kernels_on, threads in (("1", "1"), ("1", "2"), ("0", "2")):
        path = tmp_path / f"out{kernels_on}{threads}.npy"
        env = {"COAT_PADDLE_KERNELS": kernels_on, "MKL_NUM_THREADS": threads, "PATH": "/usr/bin:/bin"}
        subprocess.run(
            [sys.executable, "-c", code, str(path)], check=True, cwd=ROOT, env=env, capture_output=True
        )
        outputs[kernels_on, threads] = np.load(path)
    without = outputs["0", "2"]
    for key in (("1", "1"), ("1", "2")):
        assert float(np.abs(outputs[key] - without).max()) <= 1e-5 * float(np.abs(without).max()), key


@pytest.mark.parametrize("gelu", [False, True])
def test_bias_act_equals_torch_in_place(gelu):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, 197, 96)) * 3).astype(np.float32)
    x[0, 0, :8] = [-12, -6, -1e-4, 0, 1e-4, 6, 12, 40]  # tails and the centre
    b = rng.standard_normal(96).astype(np.float32)
    x[1] = np.linspace(-12, 12, 197 * 96).reshape(197, 96) - b  # every GELU input on a fine grid
    sums = torch.from_numpy(x).double() + torch.from_numpy(b).double()
    expected = F.gelu(sums) if gelu else sums  # exact erf GELU, in float64
    t = paddle.to_tensor(x)
    out = kernels.op("coat_bias_act_")(t, paddle.to_tensor(b), gelu)
    assert np.array_equal(t.numpy(), out.numpy()) and not np.array_equal(t.numpy(), x)  # in place
    err = np.abs(out.numpy() - expected.numpy())
    # within float rounding of the input's scale: torch's own float GELU is within 2.7e-7 |x| here
    bound = 3e-7 * np.abs(sums.numpy())
    assert bool((err <= bound).all()), float((err - bound).max())
    if gelu:
        # Relative to the value, the far negative tail loses digits: 1 + erf(x / sqrt 2) cancels.
        # On [-12, 12] this GELU's worst is 8.9e-4 where |gelu| >= 1e-3, torch's float GELU's
        # 2.2e-4 (the kernel's rational erf rounds a few times where torch's rounds once).
        assert float((err / np.maximum(np.abs(expected.numpy()), 1e-3)).max()) <= 2e-3


@pytest.mark.parametrize("height, width, p", [(56, 56, 2), (7, 9, 2), (5, 6, 4)])
def test_token_patches_equal_patches_of_the_image(height, width, p):
    """coat_token_patches on a stage's tokens equals coat_patches on their [B, C, H, W] image
    (CLS left out; rows and columns beyond a multiple of p dropped, as the strided conv does)."""
    x = np.random.default_rng(height).standard_normal((2, 1 + height * width, 24)).astype(np.float32)
    image = x[:, 1:].transpose(0, 2, 1).reshape(2, 24, height, width)
    expected = kernels.op("coat_patches")(paddle.to_tensor(np.ascontiguousarray(image)), p).numpy()
    got = kernels.op("coat_token_patches")(paddle.to_tensor(x), height, width, p).numpy()
    assert got.shape == (2, (height // p) * (width // p), 24 * p * p)
    assert np.array_equal(got, expected)


_LINEAR_CASES = [  # rows, K, N, GELU, residual, weight as [N, K] (coat_patch_linear)
    ((1, 50), 512, 1536, False, False, False),  # few rows: on 2 threads, column bands of one MKL thread
    ((1, 50), 512, 64, True, False, False),
    ((2, 197), 320, 40, False, True, False),
    ((2, 785), 128, 1024, True, False, False),  # many rows: MKL's threads, then one pass
    ((3, 7), 19, 5, False, True, False),
    ((1, 49), 1024, 320, False, False, True),  # a patch embedding: column bands of [N, K]
    ((2, 784), 48, 64, False, False, True),
]


def _linear_case(rows, k, n, gelu, residual, out_in):
    """Inputs of a _LINEAR_CASES case and torch's float64 result."""
    rng = np.random.default_rng(k + n)
    x = rng.standard_normal((*rows, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    r = rng.standard_normal((*rows, n)).astype(np.float32)
    expected = F.linear(
        torch.from_numpy(x).double(), torch.from_numpy(w).double().T, torch.from_numpy(b).double()
    )
    if gelu:
        expected = F.gelu(expected)
    if residual:
        expected = expected + torch.from_numpy(r).double()
    return (x, np.ascontiguousarray(w.T) if out_in else w, b, r if residual else None), expected.numpy()


def _run_linear(x, w, b, r, gelu, out_in):
    args = [paddle.to_tensor(x), paddle.to_tensor(w), paddle.to_tensor(b)]
    if out_in:
        return kernels.op("coat_patch_linear")(*args).numpy()
    if r is not None:
        return kernels.op("coat_linear_add")(*args, paddle.to_tensor(r)).numpy()
    return kernels.op("coat_linear")(*args, gelu).numpy()


def _check_linear(got: dict):
    for i, case in enumerate(_LINEAR_CASES):
        _, expected = _linear_case(*case)
        assert got[str(i)].shape == expected.shape
        err = float(np.abs(got[str(i)] - expected).max())
        assert err <= 2e-6 * float(np.abs(expected).max()), (case, err)


def test_linear_equals_torch():
    """coat_linear / coat_linear_add against torch's Linear (+ exact GELU, + residual) in
    float64, with Paddle's [in, out] weight layout, on this process's threads; and
    coat_patch_linear with a convolution's [out, in]."""
    _check_linear(
        {
            str(i): _run_linear(*_linear_case(*case)[0], case[3], case[5])
            for i, case in enumerate(_LINEAR_CASES)
        }
    )


def test_linear_equals_torch_on_two_threads(tmp_path):
    """The same on 2 threads (MKL_NUM_THREADS is read once per process, so in a new one),
    where few rows are split into column bands."""
    code = (
        "import sys, numpy as np\n"
        "from tests import test_kernels as t\n"
        "out = {str(i): t._run_linear(*t._linear_case(*case)[0], case[3], case[5])\n"
        "       for i, case in enumerate(t._LINEAR_CASES)}\n"
        "np.savez(sys.argv[1], **out)\n"
    )
    env = {**os.environ, "MKL_NUM_THREADS": "2"}
    done = run_python("-c", code, tmp_path / "out.npz", env=env)
    assert done.returncode == 0, done.stderr
    _check_linear(np.load(tmp_path / "out.npz"))


@pytest.mark.parametrize(
    "rows, k, hidden",
    [
        ((2, 50), 40, 160),  # hidden activations small: two Linear steps
        ((2, 4200), 64, 512),  # 17 MB of them: row blocks (the last one partial)
    ],
)
def test_mlp_equals_torch(rows, k, hidden):
    """coat_mlp against torch's fc1 -> exact GELU -> fc2, plus the residual, in float64."""
    rng = np.random.default_rng(hidden)
    x = rng.standard_normal((*rows, k)).astype(np.float32)
    w1 = (rng.standard_normal((k, hidden)) / np.sqrt(k)).astype(np.float32)
    b1 = rng.standard_normal(hidden).astype(np.float32)
    w2 = (rng.standard_normal((hidden, k)) / np.sqrt(hidden)).astype(np.float32)
    b2 = rng.standard_normal(k).astype(np.float32)
    r = rng.standard_normal((*rows, k)).astype(np.float32)
    d = {name: torch.from_numpy(a).double() for name, a in dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2, r=r).items()}
    expected = (d["r"] + F.linear(F.gelu(F.linear(d["x"], d["w1"].T, d["b1"])), d["w2"].T, d["b2"])).numpy()
    got = kernels.op("coat_mlp")(*[paddle.to_tensor(a) for a in (x, w1, b1, w2, b2, r)]).numpy()
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= 2e-6 * float(np.abs(expected).max())


@pytest.mark.parametrize(
    "batch, size, head_chs",
    [
        (1, (56, 56), 8),
        (3, (28, 28), 16),
        (2, (14, 14), 32),
        (2, (14, 9), 40),
        (3, (2, 3), 64),
        (2, (1, 1), 8),  # heads of 8k channels: on token rows
        (1, (28, 28), 19),
        (2, (5, 4), 36),
    ],
)  # other widths: on channel planes (36: kv by MKL)
def test_factor_attn_equals_timms_attention(batch, size, head_chs):
    """timm's FactorAttnConvRelPosEnc against its own qkv and proj around the compiled core."""
    from timm.models.coat import ConvRelPosEnc, FactorAttnConvRelPosEnc

    heads = 8
    torch.manual_seed(head_chs)
    crpe = ConvRelPosEnc(head_chs, heads, {3: 2, 5: 3, 7: 3})  # CoaT's windows
    attention = FactorAttnConvRelPosEnc(heads * head_chs, heads, qkv_bias=True, shared_crpe=crpe).eval()
    x = torch.randn(batch, 1 + size[0] * size[1], heads * head_chs)
    with torch.no_grad():
        expected = attention(x, size).numpy()
        qkv = paddle.to_tensor(attention.qkv(x).numpy())
        core = kernels.op("coat_factor_attn")(
            qkv,
            [paddle.to_tensor(c.weight.numpy()) for c in crpe.conv_list],
            [paddle.to_tensor(c.bias.numpy()) for c in crpe.conv_list],
            size[0],
            size[1],
            heads,
            attention.scale,
        )
        got = attention.proj(torch.from_numpy(core.numpy())).numpy()
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= 1e-6 * float(np.abs(expected).max())


@pytest.mark.parametrize("shape, eps", [((2, 3137, 64), 1e-6), ((1, 50, 512), 1e-6), ((3, 7, 19), 1e-5)])
def test_layer_norm_equals_torch(shape, eps):
    """Rows with a large common offset too, where a one-pass variance would lose digits."""
    rng = np.random.default_rng(shape[-1])
    x = (rng.standard_normal(shape) * 2 + 30).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    b = rng.standard_normal(shape[-1]).astype(np.float32)
    expected = F.layer_norm(
        torch.from_numpy(x).double(),
        shape[-1:],
        torch.from_numpy(w).double(),
        torch.from_numpy(b).double(),
        eps,
    ).numpy()
    got = kernels.op("coat_layer_norm")(
        paddle.to_tensor(x), paddle.to_tensor(w), paddle.to_tensor(b), eps
    ).numpy()
    assert float(np.abs(got - expected).max()) <= 2e-6 * float(np.abs(expected).max())


def test_coat_py_imports_nothing_of_the_kernels():
    """The model is written once, with Paddle's ops; the compiled forms are other layer classes,
    chosen from outside (create_model's ``kernels``)."""
    source = (ROOT / "paddle_model" / "coat.py").read_text()
    ours = set()  # what coat.py imports of this project: the variants, the layout, its errors, runtime
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = ["." * node.level + (node.module or "")]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        ours |= {n for n in names if n.startswith(".") or n.split(".")[0] in ("paddle_model", "converter")}
    assert ours == {"converter.layout", ".variants", ".errors", "."}  # ".": paddle_model.runtime


def counted_ops(monkeypatch) -> dict[str, int]:
    """Calls of each compiled op from now on (the fast layers call them through fast._op)."""
    assert fast._ops(), "the kernels did not build"
    calls = dict.fromkeys(fast._op, 0)

    def counting(name, run):
        def call(*args):
            calls[name] += 1
            return run(*args)

        return call

    for name, run in list(fast._op.items()):
        if run is not None:
            monkeypatch.setitem(fast._op, name, counting(name, run))
    return calls


@pytest.fixture
def small_coat():
    """A coat_tiny (compiled where the call allows), its twin built with Paddle's ops only
    (same weights) and an input."""
    paddle.seed(0)
    model = paddle_model.create_model("coat_tiny", num_classes=10)
    twin = paddle_model.create_model("coat_tiny", num_classes=10, kernels=False)
    twin.set_state_dict(model.state_dict())
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    return model, twin, x


def _close(got, expected, rtol: float = 1e-5) -> bool:
    return float(np.abs(got - expected).max()) <= rtol * float(np.abs(expected).max())


def test_the_parallel_blocks_exchange_through_the_compiled_resampling(small_coat, monkeypatch):
    """coat.py's attend_and_exchange calls ``self.resample``: in eager inference that is the
    compiled op, six times per parallel block; coat.py's own resampling not once."""
    model, _, x = small_coat
    model.eval()
    calls = counted_ops(monkeypatch)
    own = []
    monkeypatch.setattr(coat, "resample_tokens", lambda *args: own.append(1))
    with paddle.no_grad():
        model(x)
    assert calls["coat_resample"] == 6 * len(model.parallel_blocks) and own == []


def test_eager_cpu_inference_runs_the_compiled_ops_with_paddles_numbers(small_coat, monkeypatch):
    model, twin, x = small_coat
    model.eval()
    twin.eval()
    calls = counted_ops(monkeypatch)
    with paddle.no_grad():
        fast_out = model(x).numpy()
        used = ("coat_layer_norm", "coat_factor_attn", "coat_conv_pos_enc", "coat_patches", "coat_resample")
        assert all(calls[name] > 0 for name in used) and calls["coat_token_patches"] == 3, calls
        calls.update(dict.fromkeys(calls, 0))
        own_out = twin(x).numpy()
    assert sum(calls.values()) == 0  # the twin: Paddle's ops only
    assert _close(fast_out, own_out)


def test_training_gradients_and_other_dtypes_run_paddles_ops(small_coat, monkeypatch):
    """train() after eval(), an eval call with gradients, a model cast to float64: Paddle's
    ops, and gradients where asked for."""
    model, _, x = small_coat
    model.eval()
    calls = counted_ops(monkeypatch)
    with paddle.no_grad():
        model(x)
    assert sum(calls.values()) > 0
    calls.update(dict.fromkeys(calls, 0))
    model.train()
    model(x).sum().backward()
    assert model.cls_token1.grad is not None
    model.eval()
    x.stop_gradient = False
    model(x).sum().backward()
    assert x.grad is not None
    model.to(dtype="float64")
    with paddle.no_grad():
        out = model(x.astype("float64"))
    assert out.dtype == paddle.float64
    assert sum(calls.values()) == 0, calls


def test_a_graph_traced_after_eager_calls_has_paddles_ops_only(tmp_path):
    """paddle.jit runs no hooks while it traces: the layers it meets are coat.py's."""
    model = paddle_model.create_model("coat_lite_tiny", num_classes=10)
    model.eval()
    with paddle.no_grad():
        model(paddle.randn([1, 3, 64, 64]))
    spec = [paddle.static.InputSpec([None, 3, 64, 64], "float32")]
    paddle.jit.save(paddle.jit.to_static(model, input_spec=spec, full_graph=True), str(tmp_path / "m"))
    assert "coat_layer_norm" not in (tmp_path / "m.json").read_text()
    assert export.kernel_ops(tmp_path / "m") == []


def test_paddles_ops_and_the_kernels_both_match_timm(converted, monkeypatch):
    """The parity check on both paths of a CoaT (it has every kind of block): create_model's
    default (compiled ops in eager CPU inference) and kernels=False (Paddle's ops only), each
    against timm at 1e-5; at 96x96 (tests/test_parity.py checks the compiled path at the full
    sizes)."""
    from converter.readers import read_checkpoint
    from paddle_model.variants import VARIANTS
    from reference.parity import compare_models, seeded_input
    from reference.timm_model import build_timm, load_timm_state

    v = VARIANTS["coat_tiny"]
    src, dst = converted(v.name)
    reference = build_timm(v, img_size=(96, 96))
    load_timm_state(reference, read_checkpoint(src).arrays())
    x = seeded_input(2, 96, seed=5)
    calls = counted_ops(monkeypatch)
    for kernels_on in (None, False):
        calls.update(dict.fromkeys(calls, 0))
        candidate = paddle_model.create_model(v.name, pretrained=dst, kernels=kernels_on)
        report = compare_models(reference, candidate, x, v.name, tolerance=1e-5)
        assert report.ok, report.table()
        assert report.logits.max_rel <= 2e-6
        assert (calls["coat_factor_attn"] > 0) == (kernels_on is None), calls


def test_inference_from_several_threads_gives_paddles_numbers(small_coat, monkeypatch):
    """Four threads share one model: every result is right (the layers hold no per-call
    state); a deep copy runs its own compiled path."""
    import copy
    import threading

    model, twin, x = small_coat
    model.eval()
    twin.eval()
    with paddle.no_grad():
        expected = twin(x).numpy()
    results = []

    def infer():
        with paddle.no_grad():
            results.extend(model(x).numpy() for _ in range(2))

    threads = [threading.Thread(target=infer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert all(_close(got, expected) for got in results)
    calls = counted_ops(monkeypatch)
    with paddle.no_grad():
        got = copy.deepcopy(model)(x).numpy()
    assert calls["coat_layer_norm"] > 0 and _close(got, expected)
