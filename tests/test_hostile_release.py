"""The release pipeline fed hostile input: --eval-results files, file names, missing frameworks.

Each is refused up front (one line, exit 2, nothing created) or handled as the user meant; a
step that fails or is interrupted leaves no staging folder behind.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from markdown_it import MarkdownIt

from reference import eval_results
from reference import release as release_module

from .conftest import assert_refused, run_module, run_python

GOOD = {"variant": "coat_lite_tiny", "top1": 61.5, "top5": 80.25, "evaluated": 1000}


@pytest.fixture
def source(checkpoints, tmp_path):
    """A folder holding one seeded (unofficial) coat_lite_tiny checkpoint."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "coat_lite_tiny.pth").symlink_to(checkpoints("coat_lite_tiny"))
    return src


def _json(fields: dict) -> str:
    return json.dumps(fields)


# name -> (the file's bytes, or a path to give as it is; phrases the error line holds)
HOSTILE_EVAL_RESULTS = {
    "a list for variant": (
        _json({**GOOD, "variant": ["coat_lite_tiny"]}),
        ["unknown variant ['coat_lite_tiny']"],
    ),
    "deep nesting": ('{"variant": ' + "[" * 100_000 + "]" * 100_000 + "}", ["nested"]),
    "5000-digit number": (_json(GOOD).replace("1000", "1" * 5000), ["a number of 5000 characters"]),
    "/dev/zero": ("/dev/zero", ["is not a regular file"]),
    "top1 a string": (_json({**GOOD, "top1": "abc"}), ["top1 is 'abc'", "a percentage"]),
    "evaluated 1e400": (_json(GOOD).replace("1000", "1e400"), ["evaluated is inf", "a count of images"]),
    "top1 NaN": (_json(GOOD).replace("61.5", "NaN"), ["NaN (JSON has no such number)"]),
    "top5 negative": (_json({**GOOD, "top5": -5}), ["top5 is -5", "between 61.5 and 100"]),
    "top1 above 100": (_json({**GOOD, "top1": 101, "top5": 101}), ["top1 is 101", "between 0 and 100"]),
    "evaluated fractional": (_json({**GOOD, "evaluated": 2.5}), ["evaluated is 2.5"]),
    "evaluated true": (_json({**GOOD, "evaluated": True}), ["evaluated is True"]),
    "weights a number": (_json({**GOOD, "weights": 3}), ["weights is 3", "a file name"]),
    "not an object": ("[1, 2]", ["not an evaluate --result file (a JSON object)"]),
    "not UTF-8": (b'{"variant": "\xff"}', ["cannot read it as an evaluate --result file"]),
    "empty": ("", ["is empty"]),
}


@pytest.mark.parametrize("case", list(HOSTILE_EVAL_RESULTS))
def test_hostile_eval_results_are_refused_before_any_work(source, tmp_path, case):
    content, phrases = HOSTILE_EVAL_RESULTS[case]
    if content == "/dev/zero":
        given = content
    else:
        given = tmp_path / "result.json"
        given.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out"
    started = time.monotonic()
    result = run_module("reference.release", source, out, "--allow-unofficial", "--eval-results", given)
    assert_refused(result, str(given), *phrases)
    assert time.monotonic() - started < 60  # no conversion, no parity run
    assert not out.exists()


def test_an_eval_results_file_larger_than_the_cap_is_refused_unread(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:  # sparse: no disk used
        f.truncate(eval_results.MAX_EVAL_BYTES + 1)
    with pytest.raises(release_module.ConversionError, match="larger than an evaluate --result file can be"):
        eval_results.read_eval_results([big])


def test_a_valid_eval_results_file_is_read_as_typed_numbers(tmp_path):
    given = tmp_path / "result.json"
    given.write_text(_json({**GOOD, "top1": 61, "weights": "w.pdparams", "extra": {"kept": [1, 2]}}))
    measured = release_module.read_eval_results([given])["coat_lite_tiny"]
    assert (measured.top1, measured.top5, measured.evaluated) == (61.0, 80.25, 1000)
    assert measured.weights == "w.pdparams"
    assert isinstance(measured.top1, float)


def test_unofficial_files_without_the_flag_are_refused_up_front_creating_nothing(source, tmp_path):
    out = tmp_path / "out"
    result = run_module("reference.release", source, out)
    assert_refused(result, "coat_lite_tiny.pth: sha256", "matches no official release", "--allow-unofficial")
    assert result.stdout == ""  # no table of '?' and 'nan'
    assert not out.exists()


def test_a_file_name_with_control_characters_is_refused_up_front(source, tmp_path):
    (source / "coat_lite_tiny.pth").rename(source / "bad\nname.pth")
    out = tmp_path / "out"
    result = run_module("reference.release", source, out, "--allow-unofficial")
    assert_refused(result, "holds control characters; rename it")
    assert not out.exists()


@pytest.mark.parametrize("module", ["make_checkpoint", "report", "evaluate", "release"])
def test_reference_commands_without_torch_say_what_to_install_in_one_line(tmp_path, module):
    """``python -m reference.<module>`` in a process where torch and timm cannot be found."""
    args = {
        "make_checkpoint": ["coat_lite_tiny", str(tmp_path / "x.pth")],
        "report": ["--variants", "coat_lite_tiny"],
        "evaluate": [str(tmp_path), "--variant", "coat_lite_tiny", "--weights", str(tmp_path / "w.pdparams")],
        "release": [str(tmp_path), str(tmp_path / "out"), "--allow-unofficial"],
    }[module]
    code = (
        "import runpy, sys; sys.modules['torch'] = sys.modules['timm'] = None; "
        f"sys.argv = ['reference.{module}', *sys.argv[1:]]; "
        f"runpy.run_module('reference.{module}', run_name='__main__', alter_sys=True)"
    )
    result = run_python("-c", code, *args, timeout=120)
    assert_refused(
        result, "needs torch", "timm (not installed)", "pip install torch==2.14.1 ", "timm==1.0.31 "
    )
    assert sorted(os.listdir(tmp_path)) == []  # nothing written


@pytest.mark.parametrize("module", ["report", "evaluate", "release"])
def test_reference_commands_without_paddle_say_what_to_install_in_one_line(tmp_path, module):
    """``python -m reference.<module>`` in a process where Paddle cannot be found."""
    args = {
        "report": ["--variants", "coat_lite_tiny"],
        "evaluate": [str(tmp_path), "--variant", "coat_lite_tiny", "--weights", str(tmp_path / "w.pdparams")],
        "release": [str(tmp_path), str(tmp_path / "out"), "--allow-unofficial"],
    }[module]
    code = (
        "import runpy, sys; sys.modules['paddle'] = None; "
        f"sys.argv = ['reference.{module}', *sys.argv[1:]]; "
        f"runpy.run_module('reference.{module}', run_name='__main__', alter_sys=True)"
    )
    result = run_python("-c", code, *args, timeout=120)
    assert_refused(result, "paddle_model needs PaddlePaddle >= 3.0, which is not installed")
    assert sorted(os.listdir(tmp_path)) == []


def test_make_checkpoint_needs_no_paddle(tmp_path):
    code = (
        "import runpy, sys; sys.modules['paddle'] = None; "
        "sys.argv = ['reference.make_checkpoint', *sys.argv[1:]]; "
        "runpy.run_module('reference.make_checkpoint', run_name='__main__', alter_sys=True)"
    )
    result = run_python("-c", code, "coat_lite_tiny", tmp_path / "x.pth", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote seeded coat_lite_tiny (official layout, seed 0)")
    assert (tmp_path / "x.pth").stat().st_size > 1_000_000


def test_the_card_escapes_a_file_name_and_a_long_name_needs_no_longer_one(checkpoints, tmp_path):
    """A legal 250-character source name holding Markdown: the release works (its staging folder
    has a short name of its own), the card shows the name as text, the manifest keeps it as is."""
    head = "`[click](https:example.com) <img src=x> **bold** # "  # the backtick ends a code span
    name = head + "a" * (250 - len(head) - len(".pth")) + ".pth"
    assert len(name) == 250
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / name).symlink_to(checkpoints("coat_lite_tiny"))
    result = run_module("reference.release", src, out, "--allow-unofficial")
    assert result.returncode == 0, result.stdout + result.stderr
    assert os.listdir(out) == ["coat_lite_tiny"]  # no staging folder left
    assert (out / "coat_lite_tiny").stat().st_mode == out.stat().st_mode  # as the umask says, not 0700
    card = MarkdownIt("commonmark").render((out / "coat_lite_tiny" / "README.md").read_text())
    assert "<a " not in card and "<img" not in card and "<strong>" not in card  # neither link nor HTML
    assert "`[click](https:example.com) &lt;img src=x&gt; **bold** # aaaa" in card  # the name as text
    manifest = json.loads((out / "coat_lite_tiny" / "manifest.json").read_text())
    assert manifest["source"]["file"] == name


def test_markdown_text_escapes_every_ascii_punctuation_character():
    punctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    assert release_module.markdown_text(punctuation) == "".join("\\" + c for c in punctuation)
    assert release_module.markdown_text("coat tiny 7") == "coat tiny 7"


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, release_module.ConversionError])
def test_a_failing_or_interrupted_step_leaves_no_staging_folder(source, tmp_path, monkeypatch, interrupt):
    """The conversion runs for real; the parity step then raises (an interrupt propagates, a
    refusal becomes the entry's status): either way the output folder is left empty."""

    def fail(p, weights):
        assert weights.is_file() and weights.parent.name.startswith(".staging-")
        raise interrupt("stopped in the parity step")

    monkeypatch.setattr(release_module, "verify", fail)
    [planned] = release_module.plan(source, allow_unofficial=True)
    out = tmp_path / "out"
    out.mkdir()
    if interrupt is KeyboardInterrupt:
        with pytest.raises(KeyboardInterrupt):
            release_module.release_one(planned, out)
    else:
        entry = release_module.release_one(planned, out)
        assert entry.status is release_module.Status.REFUSED
        assert entry.detail == "stopped in the parity step"
    assert os.listdir(out) == []


def test_a_folder_with_nothing_releasable_is_refused_creating_nothing(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "junk.pth").write_bytes(b"not a checkpoint at all")
    result = run_module("reference.release", src, out, "--allow-unofficial")
    assert_refused(result, "nothing to release:", "junk.pth", "nothing was written")
    assert not out.exists()


def _folder(path, text: str):
    path.mkdir()
    (path / "file.txt").write_text(text)
    return path


def test_publish_replaces_a_release_only_when_forced_and_never_through_a_symlink(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    final = _folder(out / "coat_tiny", "old")
    with pytest.raises(release_module.ConversionError, match="already exists; pass --force"):
        release_module.publish(_folder(out / ".staging-a", "new"), final, force=False)
    assert (final / "file.txt").read_text() == "old"
    release_module.publish(out / ".staging-a", final, force=True)
    assert (final / "file.txt").read_text() == "new" and sorted(os.listdir(out)) == ["coat_tiny"]

    outside = _folder(tmp_path / "outside", "not ours")
    link = out / "coat_mini"
    link.symlink_to(outside)
    release_module.publish(_folder(out / ".staging-b", "newer"), link, force=True)
    assert not link.is_symlink() and (link / "file.txt").read_text() == "newer"
    assert (outside / "file.txt").read_text() == "not ours"  # what the link pointed to is untouched
    assert sorted(os.listdir(out)) == ["coat_mini", "coat_tiny"]
