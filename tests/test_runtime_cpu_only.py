"""The CPU settings start only where eager inference on the CPU starts (docs/performance.md: a
model on a GPU, a training step, a graph being built are left alone)."""

from __future__ import annotations

import paddle

from paddle_model.coat import _starts_cpu_inference


def cpu_batch() -> paddle.Tensor:
    return paddle.zeros([1, 3, 32, 32]).cpu()


def test_eager_no_grad_eval_on_the_cpu_starts_cpu_inference():
    with paddle.no_grad():
        assert _starts_cpu_inference(False, cpu_batch())


def test_training_does_not_start_cpu_inference():
    with paddle.no_grad():
        assert not _starts_cpu_inference(True, cpu_batch())


def test_a_forward_with_gradients_does_not_start_cpu_inference():
    assert paddle.is_grad_enabled()
    assert not _starts_cpu_inference(False, cpu_batch())


def test_building_a_static_graph_does_not_start_cpu_inference():
    paddle.enable_static()
    try:
        with paddle.static.program_guard(paddle.static.Program()), paddle.no_grad():
            x = paddle.static.data("x", [1, 3, 32, 32], "float32")
            assert not _starts_cpu_inference(False, x)
    finally:
        paddle.disable_static()


class _OnAnotherDevice:
    """Stands in for a tensor on a GPU on a machine without one: only its place is read."""

    class place:  # noqa: N801 - mirrors paddle.Tensor.place
        @staticmethod
        def is_cpu_place() -> bool:
            return False


def test_a_batch_on_another_device_does_not_start_cpu_inference():
    with paddle.no_grad():
        assert not _starts_cpu_inference(False, _OnAnotherDevice())
    if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        with paddle.no_grad():
            assert not _starts_cpu_inference(False, paddle.zeros([1, 3, 32, 32]).cuda())
