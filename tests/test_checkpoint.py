"""Checkpoints: trained parts by default, everything on merge, identical logits, Auto classes."""

import json

import pytest
import torch
from safetensors.torch import load_file

import llasm
from tests.conftest import tone


def _batch(processor):
    messages = [{"role": "user", "content": [{"type": "audio", "audio": tone(1.2)}, {"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "ok 好"}]
    return processor.apply_chat_template(messages)


def _perturb(model):
    """Stand-in for training: change every part a checkpoint must carry."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in list(model.adaptor.parameters()) + [model.audio_marker_embeddings.weight]:
            p.add_(torch.randn_like(p) * 0.1)


def _only_safetensors(path):
    names = {p.name for p in path.iterdir()}
    assert "model.safetensors" in names
    assert not {n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))}
    return names


def test_trained_parts_checkpoint_roundtrip(tiny_bases, tmp_path):
    model, processor = llasm.build_model(tiny_bases)
    _perturb(model)
    model.eval()
    batch = _batch(processor)
    expected = model(**batch).logits
    model.save_pretrained(tmp_path / "ckpt")
    _only_safetensors(tmp_path / "ckpt")
    saved = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert {k.split(".")[0] for k in saved} == {"adaptor", "audio_marker_embeddings"}
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["checkpoint_format"] == "trained_parts"
    assert config["text_model_name_or_path"] == tiny_bases["text"]["name_or_path"]
    loaded = llasm.LlasmForConditionalGeneration.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(loaded(**_batch(loaded.processor)).logits, expected)


def test_merged_checkpoint_and_auto_classes(tiny_bases, tmp_path):
    from transformers import AutoModel, AutoProcessor

    model, processor = llasm.build_model(tiny_bases)
    _perturb(model)
    model.eval()
    expected = model(**_batch(processor)).logits
    model.save_pretrained(tmp_path / "full", merge=True)
    _only_safetensors(tmp_path / "full")
    saved = load_file(tmp_path / "full" / "model.safetensors")
    assert any(k.startswith("language_model.") for k in saved) and any(k.startswith("audio_tower.") for k in saved)
    loaded = AutoModel.from_pretrained(tmp_path / "full")
    assert isinstance(loaded, llasm.LlasmForConditionalGeneration)
    proc = AutoProcessor.from_pretrained(tmp_path / "full")
    assert torch.equal(loaded(**_batch(proc)).logits, expected)


def test_random_bases_are_saved_whole(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path / "t")
    assert json.loads((tmp_path / "t" / "config.json").read_text())["checkpoint_format"] == "full"
    loaded = llasm.LlasmForConditionalGeneration.from_pretrained(tmp_path / "t")
    assert torch.equal(loaded(**_batch(processor)).logits, model(**_batch(processor)).logits)


def test_lora_checkpoint_roundtrip_and_merge(tiny_bases, tmp_path):
    from llasm.lora import add_lora

    model, processor = llasm.build_model(tiny_bases)
    add_lora(model, {"r": 4, "alpha": 8, "dropout": 0.0})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.05)  # LoRA B starts at zero; make it matter
    model.eval()
    expected = model(**_batch(processor)).logits
    model.save_pretrained(tmp_path / "lora")
    saved = load_file(tmp_path / "lora" / "model.safetensors")
    assert any("lora_A" in k for k in saved) and not any("base_layer" in k for k in saved)
    loaded = llasm.LlasmForConditionalGeneration.from_pretrained(tmp_path / "lora")
    assert torch.allclose(loaded(**_batch(processor)).logits, expected, atol=1e-5)
    model.save_pretrained(tmp_path / "merged", merge=True)
    merged = llasm.LlasmForConditionalGeneration.from_pretrained(tmp_path / "merged")
    assert merged.config.lora is None
    assert torch.allclose(merged(**_batch(processor)).logits, expected, atol=1e-4)


def test_loading_never_unpickles():
    import pathlib
    import re

    root = pathlib.Path(llasm.__file__).parent
    for path in root.rglob("*.py"):
        for line in path.read_text().splitlines():
            if re.search(r"torch\.load\(", line):
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_bad_checkpoint_weights_are_reported(tiny_bases, tmp_path):
    from safetensors.torch import save_file

    model, _ = llasm.build_model(tiny_bases)
    model.save_pretrained(tmp_path / "c")
    state = load_file(tmp_path / "c" / "model.safetensors")
    state["adaptor.bogus"] = torch.zeros(1)
    save_file(state, str(tmp_path / "c" / "model.safetensors"))
    with pytest.raises(ValueError, match="adaptor.bogus"):
        llasm.LlasmForConditionalGeneration.from_pretrained(tmp_path / "c")
