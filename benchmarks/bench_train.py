"""Training-step speed: one step (forward, backward, AdamW) of the Paddle CoaT against timm's, CPU fp32.

    python benchmarks/bench_train.py [--variants coat_tiny coat_lite_tiny] [--batch 8 32]
                                     [--steps 5] [--size 224] [--rounds 1]

Each side runs in its own process, as installed (none of ``_common.THREAD_VARS`` set), the
sides alternating per variant and batch. A process builds the model in training mode and the
recipe's optimizer (AdamW, weight decay 0.05 with timm's no-decay groups), takes one warm-up
step, then times ``--steps`` steps on a seeded batch with seeded labels:
- ``timm``: timm's CoaT, ``torch.optim.AdamW`` over ``timm.optim.param_groups_weight_decay``;
- ``paddle``: ``paddle_model.create_model``, ``paddle_model.train.AdamW`` over
  ``param_groups_weight_decay``.
The table gives the median step, the largest peak RSS and Paddle's ratio to timm.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_timings, load, machine, median, run_child, seeded_batch_prelude  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# after the prelude (``size_arg`` is the 4th argument): the batch at the asked size and labels
BATCH = """
size = int(size_arg)
x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
y = np.random.default_rng(1).integers(0, 1000, batch)
"""

TIMM = """
import torch
from timm.optim import param_groups_weight_decay
from reference.timm_model import build_timm
model = build_timm(name, img_size=size).train()
opt = torch.optim.AdamW(param_groups_weight_decay(model, 0.05, model.no_weight_decay()), lr=5e-4)
xt, yt = torch.from_numpy(x), torch.from_numpy(y)
def step():
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(xt), yt).backward()
    opt.step()
timed(step)
"""

PADDLE = """
import paddle
import paddle_model
from paddle_model import train
model = paddle_model.create_model(name)
model.train()
opt = train.AdamW(train.param_groups_weight_decay(model, 0.05), lr=5e-4)
xp, yp = paddle.to_tensor(x), paddle.to_tensor(y)
def step():
    paddle.nn.functional.cross_entropy(model(xp), yp).backward()
    opt.step()
    opt.clear_grad()
timed(step)
"""


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", default=["coat_tiny", "coat_lite_tiny"])
    p.add_argument("--batch", nargs="+", type=int, default=[8, 32])
    p.add_argument("--steps", type=int, default=5, help="timed steps per process")
    p.add_argument("--size", type=int, default=224, help="input size in pixels (default 224)")
    p.add_argument("--rounds", type=int, default=1, help="processes per side, alternating")
    args = p.parse_args(argv)
    prelude = seeded_batch_prelude(ROOT, "size_arg") + BATCH
    sides = [("timm", prelude + TIMM), ("paddle", prelude + PADDLE)]
    print(machine())
    print(f"load average at the start: {load()}")
    print(
        f"{args.steps} timed training steps after one warm-up, {args.size} px, each side in its own process\n"
    )
    print(
        f"{'variant':16} {'batch':>5} {'timm ms':>9} {'paddle ms':>10} {'ratio':>6} "
        f"{'timm MB':>8} {'paddle MB':>9}"
    )
    for name in args.variants:
        for batch in args.batch:
            times: dict[str, list] = {side: [] for side, _ in sides}
            rss: dict[str, int] = dict.fromkeys(times, 0)
            for _ in range(args.rounds):
                for side, code in sides:
                    _, peak, out = run_child(
                        code, name, str(batch), str(args.steps), str(args.size), mode="installed"
                    )
                    times[side] += child_timings(out)
                    rss[side] = max(rss[side], peak)
            t, pd = median(times["timm"]) * 1e3, median(times["paddle"]) * 1e3
            print(
                f"{name:16} {batch:5d} {t:9.1f} {pd:10.1f} {pd / t:6.2f} "
                f"{rss['timm'] / 2**20:8.0f} {rss['paddle'] / 2**20:9.0f}   (load {load()})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
