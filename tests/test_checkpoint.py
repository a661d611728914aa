"""Checkpoints: trained parts by default, everything on merge, identical logits, Auto classes."""

import json

import pytest
import torch
from safetensors.torch import load_file

import llasm
from tests.conftest import build_tiny, tone


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


def test_loaded_bases_are_not_first_built_at_random(tiny_bases, monkeypatch):
    """A base that is loaded is built on the meta device first (no memory, no random init); what the
    model ends with is the loaded weights, every tensor real."""
    import llasm.modeling as modeling

    built = []
    from_config = modeling.AutoModelForCausalLM.from_config
    monkeypatch.setattr(modeling.AutoModelForCausalLM, "from_config",
                        lambda config: built.append(from_config(config)) or built[-1])
    model, _ = llasm.build_model(tiny_bases)
    assert [next(m.parameters()).device.type for m in built] == ["meta"]
    tensors = list(model.parameters()) + list(model.buffers())
    assert not any(t.is_meta for t in tensors)
    base = load_file(f"{tiny_bases['text']['name_or_path']}/model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(model.language_model.state_dict()[name], base[name])
    built.clear()
    random, _ = build_tiny()  # bases without a path are built at random, for real
    assert [next(m.parameters()).device.type for m in built] == ["cpu"]
    assert not any(t.is_meta for t in random.parameters())


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


def _moved(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_copied_checkpoint_finds_its_bases_or_says_how(tiny_bases, tmp_path):
    """A trained-parts checkpoint records its bases as given, relative to itself and below
    $LLASM_HOME: a project folder copied whole still loads; a lone copy names the base and the
    override, which then loads it."""
    import shutil

    bases = tmp_path / "project" / "bases"
    shutil.copytree(tiny_bases["audio"]["name_or_path"], bases / "whisper")
    shutil.copytree(tiny_bases["text"]["name_or_path"], bases / "llama")
    spec = {**tiny_bases, "audio": {"name_or_path": str(bases / "whisper")}, "text": {"name_or_path": str(bases / "llama")}}
    model, processor = llasm.build_model(spec)
    _perturb(model)
    model.eval()
    expected = model(**_batch(processor)).logits
    model.save_pretrained(tmp_path / "project" / "runs" / "s1" / "final")

    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "project", moved)  # the absolute paths are gone, the layout is kept
    loaded = llasm.LlasmForConditionalGeneration.from_pretrained(moved / "runs" / "s1" / "final")
    assert torch.equal(loaded(**_batch(processor)).logits, expected)
    assert loaded.config.audio_model_name_or_path == str(moved / "bases" / "whisper")

    alone = _moved(moved / "runs" / "s1" / "final", tmp_path / "alone")
    with pytest.raises(FileNotFoundError, match=r"audio tower.*audio_tower=PATH_OR_HUB_ID.*--audio-tower"):
        llasm.LlasmForConditionalGeneration.from_pretrained(alone)
    loaded = llasm.LlasmForConditionalGeneration.from_pretrained(alone, audio_tower=moved / "bases" / "whisper",
                                                                 language_model=moved / "bases" / "llama")
    assert torch.equal(loaded(**_batch(processor)).logits, expected)


def test_bases_below_llasm_home_follow_it(tiny_bases, tmp_path, monkeypatch):
    import shutil

    from llasm.checkpoint import resolve_base

    home = tmp_path / "home"
    shutil.copytree(tiny_bases["audio"]["name_or_path"], home / "whisper-x")
    monkeypatch.setenv("LLASM_HOME", str(home))
    spec = {**tiny_bases, "audio": {"name_or_path": str(home / "whisper-x")}}
    model, _ = llasm.build_model(spec)
    model.save_pretrained(tmp_path / "c")
    config = llasm.LlasmConfig.from_pretrained(tmp_path / "c")
    assert config.base_locations["audio_tower"][-1] == "$LLASM_HOME/whisper-x"
    shutil.move(home, tmp_path / "other-home")  # another machine: same starter model, other LLASM_HOME
    monkeypatch.setenv("LLASM_HOME", str(tmp_path / "other-home"))
    assert resolve_base("audio_tower", config, str(tmp_path / "c")) == str(tmp_path / "other-home" / "whisper-x")
    config.audio_model_name_or_path, config.base_locations = "openai/whisper-base", None
    assert resolve_base("audio_tower", config, str(tmp_path / "c")) == "openai/whisper-base"  # a hub id stays one


@pytest.mark.slow
def test_auto_model_without_import_llasm(tiny_bases, tmp_path):
    """config.json's auto_map + llasm_auto.py: transformers loads a checkpoint (either format) with
    trust_remote_code=True and no `import llasm`; without the flag it says what to pass."""
    import os
    import subprocess
    import sys

    model, _ = llasm.build_model(tiny_bases)
    model.save_pretrained(tmp_path / "parts")
    model.save_pretrained(tmp_path / "full", merge=True)
    script = (
        "import sys\n"
        "from transformers import AutoModel\n"
        "try:\n"
        "    AutoModel.from_pretrained(sys.argv[1])\n"
        "except ValueError as err:\n"
        "    print('refused:', 'trust_remote_code=True' in str(err))\n"
        "for d in sys.argv[1:]:\n"
        "    m = AutoModel.from_pretrained(d, trust_remote_code=True)\n"
        "    print(type(m).__name__, m.config.checkpoint_format, m.processor is not None)\n")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "parts"), str(tmp_path / "full")],
                         capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "refused: True" in out.stdout  # after transformers' y/N prompt, which a closed stdin answers "no"
    assert [line for line in out.stdout.splitlines() if line.startswith("Llasm")] == [
        "LlasmForConditionalGeneration trained_parts True", "LlasmForConditionalGeneration full True"]


def test_checkpoints_follow_the_umask(tiny, tmp_path):
    """Atomic writes go through mkdtemp/mkstemp (0700/0600): the result must get what the umask allows."""
    import os
    import stat

    model, _ = tiny
    old = os.umask(0o022)
    try:
        model.save_pretrained(tmp_path / "c")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "c" / "llasm_auto.py").stat().st_mode) == 0o644  # io.write_text
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "c").iterdir()} == {0o644}


def test_atomic_files_get_plain_permissions_even_when_the_writer_replaces_them(tmp_path):
    """safetensors' save_file writes a fresh 0600 file over the temp path: the rename keeps open()'s mode."""
    import os
    import stat

    from safetensors.torch import save_file

    from llasm.io import atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "x.safetensors") as tmp:
            save_file({"a": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.safetensors").stat().st_mode) == 0o644
