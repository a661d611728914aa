"""The audio tower: an openai-whisper ``.pt`` checkpoint loads as the tower (``audio_tower: base.pt`` in a
model YAML), and computes what openai-whisper's own encoder computes."""

from __future__ import annotations

import pytest
import torch
import whisper.model  # openai-whisper: writes the tiny checkpoint and is the reference encoder
import yaml

import llasm
from llasm.audio_tower import load_whisper_encoder, read_openai_checkpoint
from llasm.io import load_yaml
from tests.conftest import TINY_YAML

DIMS = dict(n_mels=80, n_audio_ctx=50, n_audio_state=32, n_audio_head=2, n_audio_layer=2, n_vocab=64,
            n_text_ctx=16, n_text_state=32, n_text_head=2, n_text_layer=1)


@pytest.fixture(scope="module")
def openai_checkpoint(tmp_path_factory):
    """A tiny Whisper saved as whisper.load_model reads it: {"dims": ..., "model_state_dict": ...}."""
    torch.manual_seed(0)
    reference = whisper.model.Whisper(whisper.model.ModelDimensions(**DIMS)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped tensor would show
        for name, p in reference.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("openai") / "tiny.pt"
    torch.save({"dims": DIMS, "model_state_dict": reference.state_dict()}, path)
    return path, reference


def test_openai_checkpoint_loads_as_the_tower_and_matches_its_encoder(openai_checkpoint):
    path, reference = openai_checkpoint
    config, state = read_openai_checkpoint(path)
    assert (config.d_model, config.encoder_layers, config.encoder_attention_heads, config.num_mel_bins,
            config.max_source_positions, config.encoder_ffn_dim) == (32, 2, 2, 80, 50, 128)
    tower = load_whisper_encoder(str(path)).eval()
    mel = torch.randn(2, 80, 2 * DIMS["n_audio_ctx"])  # openai's encoder takes exactly n_audio_ctx * 2 frames
    with torch.no_grad():
        want = reference.encoder(mel)
        got = tower(mel).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_model_yaml_audio_tower_pt(openai_checkpoint, tmp_path):
    path, reference = openai_checkpoint
    spec = load_yaml(TINY_YAML)
    spec.pop("audio")
    spec["audio_tower"] = str(path)
    yaml_path = tmp_path / "model.yaml"
    yaml_path.write_text(yaml.safe_dump(spec))
    model, processor = llasm.build_model(yaml_path)
    assert model.config.audio_model_name_or_path == str(path)
    assert not any(p.requires_grad for p in model.audio_tower.parameters())
    _, state = read_openai_checkpoint(path)
    tower = model.audio_tower.state_dict()
    assert set(state) == set(tower) and all(torch.equal(tower[k], v) for k, v in state.items())
    mel = torch.randn(1, 80, 2 * DIMS["n_audio_ctx"])
    with torch.no_grad():
        hidden, _ = model.encode_audio(mel)
    torch.testing.assert_close(hidden, reference.encoder(mel).detach(), rtol=1e-4, atol=1e-5)
    # and it talks: a spoken turn through the processor and the model
    inputs = processor.apply_chat_template([{"role": "user", "content": [
        {"type": "audio", "audio": torch.randn(16000).numpy()}]}], add_generation_prompt=True)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_a_pt_that_is_not_openai_whisper_is_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(ValueError, match=rf"{bad}: not an openai-whisper checkpoint"):
        load_whisper_encoder(str(bad))
    spec = load_yaml(TINY_YAML)
    spec["audio_tower"] = str(bad)
    with pytest.raises(ValueError, match="give the audio tower once"):
        llasm.build_model(spec)
