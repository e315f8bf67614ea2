"""PNG generation records: both chunks written, read back, and bad files refused clearly."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from limner.errors import LimnerError
from limner.generation.pngmeta import a1111_parameters, parse_parameters, read_parameters, read_record, save_png
from limner.generation.request import GenerationRecord


def make_record(**kw) -> GenerationRecord:
    base = dict(
        prompt="red heart", negative="blue", label=None, seed=7, sampler="dpmpp_2m", steps=20,
        cfg=2.0, truncation=None, batch_seeds=[7, 8], index=0, family="diffusion",
        run_id="abc123", run_path="/tmp/run", step=100, model_hash="deadbeef", width=32,
        height=32, device="cpu", dtype="float32", limner_version="0.1.0", torch_version="2.13.0",
    )
    base.update(kw)
    return GenerationRecord(**base)


def test_round_trip(tmp_path):
    rec = make_record(prompt="a café ☕ with \"quotes\"\nand a newline")
    path = save_png(Image.new("RGB", (32, 32), (10, 20, 30)), rec, tmp_path / "x.png")
    assert read_record(path) == rec
    params = read_parameters(path)
    assert params.startswith("a café ☕")
    assert "Negative prompt: blue" in params
    assert "Seed: 7" in params and "Sampler: dpmpp_2m" in params and "CFG scale: 2.0" in params
    assert not list(tmp_path.glob(".tmp-*"))
    with Image.open(path) as im:
        assert im.getpixel((0, 0)) == (10, 20, 30)


def test_a1111_text_skips_missing_fields():
    text = a1111_parameters(make_record(negative=None, cfg=None))
    assert "Negative prompt" not in text
    assert "CFG scale" not in text


def test_png_without_record(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(LimnerError, match="no limner generation record"):
        read_record(path)


def test_not_a_png(tmp_path):
    path = tmp_path / "fake.png"
    path.write_bytes(b"GIF89a not really")
    with pytest.raises(LimnerError, match="not a readable PNG"):
        read_record(path)
    with pytest.raises(LimnerError, match="no such file"):
        read_record(tmp_path / "missing.png")


def test_malformed_record(tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("limner", "{not json")
    path = tmp_path / "bad.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    with pytest.raises(LimnerError, match="malformed"):
        read_record(path)


def test_record_ignores_unknown_keys():
    data = json.loads(make_record().to_json())
    data["future_field"] = 1
    assert GenerationRecord.from_dict(data) == make_record()


# The fixed fields as limner wrote them before family options were added (their order is kept)
OLD_TEXT = ("red heart\nNegative prompt: blue\nSteps: 20, Sampler: dpmpp_2m, CFG scale: 2.0, Seed: 7, "
            "Size: 32x32, Model hash: deadbeef, Model: abc123@100, Family: diffusion, Version: limner 0.1.0")


def test_family_options_are_in_the_text_after_the_fixed_fields(tmp_path):
    rec = make_record(family="autoregressive", sampler=None, steps=None,
                      options={"top_p": 0.9, "temperature": 0.7, "top_k": 50})
    path = save_png(Image.new("RGB", (4, 4)), rec, tmp_path / "x.png")
    text = read_parameters(path)
    last = text.splitlines()[-1]
    assert last == ("CFG scale: 2.0, Seed: 7, Size: 32x32, Model hash: deadbeef, Model: abc123@100, "
                    "Family: autoregressive, Temperature: 0.7, Top k: 50, Top p: 0.9, Version: limner 0.1.0")
    parsed = parse_parameters(text)
    assert parsed["Temperature"] == "0.7" and parsed["Top k"] == "50" and parsed["Top p"] == "0.9"
    assert parsed["Prompt"] == "red heart" and parsed["Negative prompt"] == "blue"
    gan = a1111_parameters(make_record(family="gan", sampler=None, steps=None, cfg=None, truncation=0.7))
    assert "Family: gan, Truncation: 0.7, Version" in gan
    edit = a1111_parameters(make_record(strength=0.6, options={}))
    assert "Denoising strength: 0.6, Version" in edit


def test_text_without_options_is_unchanged_and_old_texts_parse_the_same():
    assert a1111_parameters(make_record()) == OLD_TEXT
    old = parse_parameters(OLD_TEXT)
    assert old == {"Prompt": "red heart", "Negative prompt": "blue", "Steps": "20", "Sampler": "dpmpp_2m",
                   "CFG scale": "2.0", "Seed": "7", "Size": "32x32", "Model hash": "deadbeef",
                   "Model": "abc123@100", "Family": "diffusion", "Version": "limner 0.1.0"}
    new = parse_parameters(a1111_parameters(make_record(options={"temperature": 1.5})))
    assert {k: v for k, v in new.items() if k != "Temperature"} == old and new["Temperature"] == "1.5"


def test_values_with_separators_are_quoted_and_read_back():
    rec = make_record(run_id='runs, "best": 2', prompt="", negative="a, b: c",
                      options={"temperature": 1.0, "style": "x, y\nz"})
    text = a1111_parameters(rec)
    parsed = parse_parameters(text)
    assert parsed["Model"] == 'runs, "best": 2@100' and parsed["Style"] == "x, y\nz"
    assert parsed["Temperature"] == "1.0" and parsed["Version"] == "limner 0.1.0"
    assert parsed["Negative prompt"] == "a, b: c" and "Prompt" not in parsed
    assert parse_parameters("a lone prompt") == {"Prompt": "a lone prompt"}
