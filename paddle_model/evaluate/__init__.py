"""Top-1/top-5 accuracy of converted CoaT weights on ImageNet-style data.

    python -m paddle_model.evaluate imagenet/val --variant coat_lite_small --weights coat_lite_small.pdparams
    python -m paddle_model.evaluate imagenet --list val_list.txt --variant ... --weights ...
    python -m paddle.distributed.launch --nproc_per_node 2 $(which coat-evaluate) imagenet/val ...

Preprocessing is the variant's eval transform (``paddle_model.transforms``, equal to timm's).
The parts: :mod:`paddle_model.datasets` lists and reads the data, :mod:`.runner` runs the model
(one process, or every rank under ``paddle.distributed.launch``, combined with all_reduce),
:mod:`.report` makes the result and its table, :mod:`.cli` is the command line. Exit codes: 0
done, 1 top-1 below ``--expect-top1``, 2 bad input (unless ``--skip-bad`` leaves bad images out
and counts them). ``python -m reference.evaluate`` runs timm's CoaT beside it.
"""

from __future__ import annotations

from .cli import main
from .report import summarize, table
from .runner import Outcomes, run

__all__ = ["Outcomes", "main", "run", "summarize", "table"]
