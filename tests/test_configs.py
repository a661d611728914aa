"""Every YAML under configs/ reads through llasm.settings into its typed schema; model YAMLs have what
build_model needs."""

from pathlib import Path

import pytest
import yaml

from llasm import settings
from llasm.builder import ModelSpec, load_spec
from llasm.io import expand_env, load_yaml
from llasm.prep.augment import AugmentConfig, load_augment_config
from llasm.prep.tts import load_tts_config
from llasm.speech.mel_training import load_token2wav_configs
from llasm.speech.vocoder_config import load_vocoder_configs
from llasm.training import TrainConfig, load_config
from llasm.training.align import AlignConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def schema(path: Path) -> str:
    """Which reader a YAML is for, by where it lives (a new kind of YAML must be added here)."""
    rel = path.relative_to(ROOT / "configs").as_posix()
    if rel.startswith("model/"):
        return "model"
    if rel.startswith("vocoder"):
        return "vocoder"
    if rel.startswith("token2wav"):
        return "token2wav"
    if rel.startswith("tts"):
        return "tts"
    if rel.startswith("augment"):
        return "augment"
    if rel == "demo/warm_start.yaml":
        return "align"
    if "stage" in path.name:
        return "stage"
    raise AssertionError(f"configs/{rel}: no schema known for it; add one to tests/test_configs.py")


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(p.parents[1])) for p in CONFIGS])
def test_every_yaml_reads_into_its_schema(path):
    kind = schema(path)
    if kind == "model":
        spec = load_spec(path)
        assert isinstance(spec, ModelSpec) and spec.adaptor.type in ("linear", "mlp")
        assert spec.audio.name_or_path or spec.audio.config or spec.audio_tower
        assert spec.text.name_or_path or spec.text.tokenizer
    elif kind == "stage":
        cfg = load_config(path)
        assert isinstance(cfg, TrainConfig) and cfg.data.sources
    elif kind == "vocoder":
        vocoder, train = load_vocoder_configs(path)
        assert vocoder.samples_per_frame == 320 and train.batch_size > 0
    elif kind == "token2wav":
        token2wav, decoder, train = load_token2wav_configs(path)
        assert token2wav.type == "unit_mel" and decoder.mel.num_mels == 80 and train.batch_size > 0
    elif kind == "tts":
        assert load_tts_config(path)["languages"]
    elif kind == "augment":
        assert isinstance(load_augment_config(path), AugmentConfig)
    else:
        assert isinstance(settings.load(AlignConfig, path), AlignConfig)


def test_a_misspelt_key_in_any_kind_of_yaml_names_the_key_and_the_file(tmp_path):
    for source, reader in (("configs/model/tiny.yaml", load_spec), ("configs/stage2_instruct_lora.yaml", load_config),
                           ("configs/demo/warm_start.yaml", lambda p: settings.load(AlignConfig, p)),
                           ("configs/vocoder_cpu.yaml", load_vocoder_configs), ("configs/tts.yaml", load_tts_config),
                           ("configs/token2wav_cpu.yaml", load_token2wav_configs),
                           ("configs/augment_demo.yaml", load_augment_config)):
        data = load_yaml(ROOT / source)
        section = next((k for k in ("adaptor", "train", "vocoder", "augment") if isinstance(data.get(k), dict)), None)
        (data[section] if section else data)["typo_key"] = 1
        path = tmp_path / Path(source).name
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ValueError, match=rf"{path}: unknown config key '{section + '.' if section else ''}typo_key'"):
            reader(path)


def test_paper_scale_yaml_names_hub_models():
    spec = load_spec(ROOT / "configs" / "model" / "llasm-7b-cllama2.yaml")
    assert spec.audio.name_or_path == "openai/whisper-large-v2"
    assert spec.text.name_or_path == "LinkSoul/Chinese-Llama-2-7b"
    assert spec.template == "llama2"


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("LLASM_HOME", "/models")
    assert expand_env({"a": ["${LLASM_HOME}/whisper", "${UNSET_VAR:-x}"]}) == {"a": ["/models/whisper", "x"]}
    assert yaml.safe_load("a: 1") == {"a": 1}


def test_quick_start_paths_work_outside_the_repository(tmp_path, monkeypatch):
    """The README's `llasm.build_model("configs/model/tiny.yaml")` from any working directory, as
    load_model and the stage YAMLs' model: already do."""
    import llasm

    monkeypatch.chdir(tmp_path)
    model, processor = llasm.build_model("configs/model/tiny.yaml")
    assert processor.num_audio_tokens(16000) > 0 and model.config.model_type == "llasm"


def test_missing_base_models_are_named_together(tmp_path, monkeypatch):
    """A model YAML whose Whisper and LLM folders are both missing names both in one error (not the
    first, then the next after the user fixed it); hub ids are left to the loader."""
    from llasm.builder import build_model, check_base_paths

    monkeypatch.setenv("LLASM_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(FileNotFoundError, match=r"audio.name_or_path: .*empty-home/whisper-base; "
                                                r"text.name_or_path: .*empty-home/qwen2.5-0.5b-instruct .*make starter"):
        build_model(ROOT / "configs" / "model" / "starter.yaml")
    check_base_paths({"audio.name_or_path": "openai/whisper-base", "text.name_or_path": "Qwen/Qwen2.5-0.5B-Instruct",
                      "text.tokenizer": None, "audio_tower": str(tmp_path)})  # hub ids, and a folder that exists
    with pytest.raises(FileNotFoundError, match=r"^base model\(s\) not found: text.tokenizer: ./nowhere "):
        check_base_paths({"text.tokenizer": "./nowhere"})
