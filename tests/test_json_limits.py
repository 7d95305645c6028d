"""converter.files.load_json: the one bounded JSON reader (manifests, evaluate results, label
names in config.json or safetensors metadata), each refusal one line in the caller's error."""

from __future__ import annotations

import json

import pytest

from converter.errors import ConversionError, WeightsError
from converter.files import load_json
from converter.paddle_weights import read_label_names


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_nesting_up_to_the_limit_is_read_and_one_level_more_is_refused():
    assert load_json(_nested(8), "x", ConversionError, 8, 40) == json.loads(_nested(8))
    with pytest.raises(ConversionError, match=r"^x: bad \(nested more than 8 deep\)$"):
        load_json(_nested(9), "x: bad", ConversionError, 8, 40)


def test_nesting_past_the_parser_is_refused_as_too_deep():
    with pytest.raises(WeightsError, match=r"^x \(nested too deep\)$"):
        load_json(_nested(200_000).encode(), "x", WeightsError, 16, 40)


def test_a_number_literal_longer_than_the_limit_is_refused_unparsed():
    assert load_json("[1234567890, -1.5e3]", "x", ConversionError, 4, 11) == [1234567890, -1500.0]
    with pytest.raises(ConversionError, match=r"^x \(a number of 12 characters\)$"):
        load_json("[123456789012]", "x", ConversionError, 4, 11)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(constant):
    with pytest.raises(ConversionError, match=rf"^x \({constant} \(JSON has no such number\)\)$"):
        load_json(f'{{"top1": {constant}}}', "x", ConversionError, 4, 40)


def test_bytes_that_are_not_utf8_are_refused_as_invalid_json():
    with pytest.raises(ConversionError, match=r"^x \(invalid JSON: 'utf-8' codec can't decode"):
        load_json(b'["\xff"]', "x", ConversionError, 4, 40)


def test_a_config_nested_deeper_than_its_limit_is_refused(tmp_path):
    # 40 levels: well within what json itself parses, beyond the 32 a label-names config may nest
    (tmp_path / "config.json").write_text('{"label_names": ["a", "b"], "x": ' + _nested(40) + "}")
    with pytest.raises(WeightsError, match=r"config.json: not valid JSON \(nested more than 32 deep\)$"):
        read_label_names(tmp_path / "w.pdparams", 2)


def test_a_config_with_a_long_number_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"label_names": ["a", "b"], "n": ' + "7" * 41 + "}")
    with pytest.raises(WeightsError, match=r"config.json: not valid JSON \(a number of 41 characters\)$"):
        read_label_names(tmp_path / "w.pdparams", 2)


def test_a_config_within_the_limits_gives_its_names(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"label_names": ["a", "b"], "id2label": {"0": "a"}}))
    assert read_label_names(tmp_path / "w.pdparams", 2) == ["a", "b"]
