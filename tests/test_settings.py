"""llasm.settings, the one typed config reader: nested sections, type coercion, dotted overrides (list
elements too), and errors that name the key and the file."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from llasm import settings
from llasm.training import load_config


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int | None = None
    on: bool = False


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    sources: list = field(default_factory=list)


def test_from_dict_nested_sections_and_coercion():
    got = settings.from_dict(Outer, {"name": "y", "inner": {"lr": "1e-4", "steps": "7", "on": "yes"}})
    assert got == Outer("y", Inner(1e-4, 7, True))
    assert settings.from_dict(Outer, None) == Outer()


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = tmp_path / "stage.yaml"
    path.write_text("inner: {lr: 0.1, stepz: 3}\n")
    with pytest.raises(ValueError, match=rf"{path}: unknown config key 'inner.stepz'; did you mean 'inner.steps'\?; "
                                         r"known: \['lr', 'on', 'steps'\]"):
        settings.load(Outer, path)
    with pytest.raises(ValueError, match=r"unknown config key 'inner.warmup'; known: "):  # nothing close: no guess
        settings.load(Outer, {"inner": {"warmup": 3}})
    with pytest.raises(ValueError, match=rf"{path}: config key 'inner.lr': cannot read 'fast' as float"):
        settings.load(Outer, {"inner": {"lr": "fast"}}, where=str(path))


def test_overrides_reach_list_elements():
    data = {"data": {"sources": [{"path": "a.jsonl", "weight": 1.0}]}}
    out = settings.apply_overrides(data, ["data.sources.0.path=b.jsonl", "data.sources.1.path=c.jsonl",
                                          "data.sources.1.weight=0.5", "train.lr=1e-4"])
    assert out == {"data": {"sources": [{"path": "b.jsonl", "weight": 1.0}, {"path": "c.jsonl", "weight": 0.5}]},
                   "train": {"lr": "1e-4"}}
    assert data["data"]["sources"][0]["path"] == "a.jsonl"  # the input is left as it was
    assert settings.apply_overrides({"ids": [1, 2]}, ["ids.1=5", "ids.2=6"]) == {"ids": [1, 5, 6]}


@pytest.mark.parametrize("override, message", [
    ("data.sources.3.path=x", r"'3' is not an index of a list of 1"),
    ("data.sources.first.path=x", r"'first' is not an index of a list of 1"),
    ("data.sources.0.path.deeper=x", r"data.sources.0.path is a str, not a section or list"),
    ("no_equals_sign", r"override 'no_equals_sign' is not key=value"),
])
def test_bad_overrides_say_what_is_wrong(override, message):
    with pytest.raises(ValueError, match=rf"where.yaml: .*{message}"):
        settings.apply_overrides({"data": {"sources": [{"path": "a"}]}}, [override], "where.yaml")


def test_stage_yaml_list_override_that_failed_before():
    """`data.sources.0.path=...` failed with AttributeError: 'list' object has no attribute 'setdefault'."""
    cfg = load_config("configs/stage1_asr_align.yaml", ["data.sources.0.path=elsewhere.jsonl", "train.lr=2e-4"])
    assert cfg.data.sources[0]["path"] == "elsewhere.jsonl" and cfg.train.lr == 2e-4
    # a mistyped override is the command line's mistake, not the file's: the message says which
    with pytest.raises(ValueError, match=r"^the overrides \(train.lrr=1\) of .*configs/stage1_asr_align.yaml: "
                                         r"unknown config key 'train.lrr'; did you mean 'train.lr'\?"):
        load_config("configs/stage1_asr_align.yaml", ["train.lrr=1"])
    with pytest.raises(ValueError, match=r"^the overrides \(train.lr=fast\) of .*: config key 'train.lr': cannot read"):
        load_config("configs/stage1_asr_align.yaml", ["train.lr=fast"])


def test_load_sections_reads_each_section_and_names_whose_mistake_it_is(tmp_path):
    @dataclass
    class Model:
        width: int = 4

    @dataclass
    class Train:
        max_steps: int = 10
        lr: float = 1e-3

    sections = {"model": Model, "train": Train}
    path = tmp_path / "two.yaml"
    path.write_text("model: {width: 8}\ntrain: {lr: 2e-4}\n")
    model, train = settings.load_sections(path, sections, ["train.max_steps=3"])
    assert (model.width, train.max_steps, train.lr) == (8, 3, 2e-4)
    assert settings.load_sections(path, sections, ["max_steps=5"], bare=True)[1].max_steps == 5  # its one section
    with pytest.raises(ValueError, match=r"^the overrides \(max_steps=5\) of .*two.yaml: unknown top-level key\(s\) "
                                         r"\['max_steps'\]; did you mean 'train.max_steps'\? \(the sections are \['model', 'train'\]\)"):
        settings.load_sections(path, sections, ["max_steps=5"])
    with pytest.raises(ValueError, match=r"^the overrides \(train.lrr=1\) of .*: unknown config key 'train.lrr'; did you mean 'train.lr'\?"):
        settings.load_sections(path, sections, ["train.lrr=1"])
    with pytest.raises(ValueError, match=r"unknown top-level key\(s\) \['max_step'\]; did you mean 'train.max_steps'\?"):
        settings.load_sections(path, sections, ["max_step=5"], bare=True)  # a mistyped bare key: its section too
    with pytest.raises(ValueError, match=r"^the overrides \(model.max_steps=5\) of .*: unknown config key "
                                         r"'model.max_steps'; it belongs to the 'train' section: did you mean 'train.max_steps'\?$"):
        settings.load_sections(path, sections, ["model.max_steps=5"])  # a key under the wrong section
    path.write_text("- model\n- train\n")
    with pytest.raises(ValueError, match=r"expected a mapping of the sections \['model', 'train'\], got list"):
        settings.load_sections(path, sections)
    path.write_text("model: {width: 8}\ntrian: {}\n")
    with pytest.raises(ValueError, match=rf"^{path}: unknown top-level key\(s\) \['trian'\]; did you mean 'train'\?"):
        settings.load_sections(path, sections, ["train.max_steps=3"])  # the file's own mistake names the file
