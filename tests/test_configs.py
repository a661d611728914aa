"""Every YAML under configs/ parses; model YAMLs have what build_model needs."""

from pathlib import Path

import pytest
import yaml

from llasm.io import expand_env, load_yaml

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(p.parents[1])) for p in CONFIGS])
def test_yaml_parses(path):
    data = load_yaml(path)
    assert isinstance(data, dict) and data


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name == "model"], ids=lambda p: p.name)
def test_model_yaml_has_parts(path):
    spec = load_yaml(path)
    assert {"audio", "text", "adaptor"} <= set(spec)
    assert spec["audio"].get("name_or_path") or spec["audio"].get("config")
    assert spec["text"].get("name_or_path") or spec["text"].get("tokenizer")
    assert spec["adaptor"]["type"] in ("linear", "mlp")


def test_paper_scale_yaml_names_hub_models():
    spec = load_yaml(Path(__file__).resolve().parents[1] / "configs" / "model" / "llasm-7b-cllama2.yaml")
    assert spec["audio"]["name_or_path"] == "openai/whisper-large-v2"
    assert spec["text"]["name_or_path"] == "LinkSoul/Chinese-Llama-2-7b"
    assert spec["template"] == "llama2"


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("LLASM_HOME", "/models")
    assert expand_env({"a": ["${LLASM_HOME}/whisper", "${UNSET_VAR:-x}"]}) == {"a": ["/models/whisper", "x"]}
    assert yaml.safe_load("a: 1") == {"a": 1}
