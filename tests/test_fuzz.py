"""Mutated files of every format fail closed: refused with the typed error, or read exactly.

The zip ``.pth`` case is ``test_sources.test_fuzzed_checkpoints_fail_closed_or_convert_identically``
(its CRCs let flips anywhere be caught). The formats here carry no checksum over their tensor
bytes, so their flips go where a reader can tell: the header, the pickle's opcodes, the
legacy storage records, plus truncations anywhere. ``benchmarks/soak_hostile.py`` runs the
same at length (1000+ per format, flips anywhere).
"""

from __future__ import annotations

import io
import pickletools

import numpy as np

from converter.errors import WeightsError
from converter.pipeline import convert_checkpoint

from .hostile import convert_each, mutations

LITE = "coat_lite_tiny"


def pickle_structure(data: bytes, start: int = 0, pickles: int = 1) -> tuple[list[int], int]:
    """Positions of every byte of ``pickles`` consecutive pickles from ``start`` except the
    payload of bytes opcodes (tensor data), and where they end."""
    f = io.BytesIO(data)
    f.seek(start)
    places: list[int] = []
    for _ in range(pickles):
        ops = list(pickletools.genops(f))
        for (_op, arg, pos), nxt in zip(ops, ops[1:] + [(None, None, f.tell())]):
            end = nxt[2]
            if isinstance(arg, bytes) and len(arg) > 16:
                end = pos + 1 + (end - pos - 1 - len(arg))  # opcode and length only
            places.extend(range(pos, end))
    return places, f.tell()


def test_fuzzed_safetensors_sources_fail_closed_or_convert_identically(tmp_path):
    from safetensors.torch import save_model

    from reference.checkpoints import seeded_model

    source = tmp_path / "src.safetensors"
    save_model(seeded_model(LITE), str(source))
    reference = tmp_path / "ref.pdparams"
    convert_checkpoint(source, reference)
    expected, data = reference.read_bytes(), source.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    src, dst = tmp_path / "fuzz.safetensors", tmp_path / "fuzz.pdparams"
    refused = convert_each(mutations(data, list(range(header_end)), 240, seed=1), src, dst, expected)
    assert refused > 200
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fuzz.safetensors",
        "ref.pdparams",
        "src.safetensors",
    ]


def test_fuzzed_legacy_sources_fail_closed_or_convert_identically(tmp_path, checkpoints):
    import torch

    source = tmp_path / "src.pth"
    torch.save(torch.load(checkpoints(LITE)), source, _use_new_zipfile_serialization=False)
    reference = tmp_path / "ref.pdparams"
    convert_checkpoint(source, reference)
    expected, data = reference.read_bytes(), source.read_bytes()
    places, storages = pickle_structure(data, pickles=5)
    places += range(storages, storages + 8)  # the first storage record's element count
    src, dst = tmp_path / "fuzz.pth", tmp_path / "fuzz.pdparams"
    refused = convert_each(mutations(data, places, 150, seed=2), src, dst, expected)
    assert refused > 120


def test_fuzzed_pdparams_fail_closed_through_create_model(converted, tmp_path):
    """WeightsError, or the model holds exactly the arrays the file holds (a flipped byte order
    or name that still fits is data, not a fault). The first 40 cases go through
    ``create_model(pretrained=...)`` itself, the rest through the two steps it takes after
    building the model (``read_weights``, strict ``load_state_dict``) into one built model."""
    import paddle_model
    from converter.paddle_weights import read_weights
    from paddle_model.weights import load_state_dict

    _, source = converted(LITE)
    data = source.read_bytes()
    places, _ = pickle_structure(data)
    path = tmp_path / "fuzz.pdparams"
    built = paddle_model.create_model(LITE)
    refused = loaded = 0
    for n, mutated in mutations(data, places, 180, seed=3):
        path.write_bytes(mutated)
        try:
            if n < 40:
                model = paddle_model.create_model(LITE, pretrained=path)
            else:
                model = built
                load_state_dict(model, read_weights(path), source=str(path))
        except WeightsError:
            refused += 1
            continue
        loaded += 1
        state = read_weights(path)
        for key, value in model.state_dict().items():
            np.testing.assert_array_equal(value.numpy(), state[key], err_msg=f"case {n}: {key}")
    assert refused > 130, (refused, loaded)
