"""Starter models: CTranslate2 reader + Whisper mapping, GGUF dequantize/save, checksums, idempotency.

Everything here is offline and tiny (synthetic model.bin / GGUF written in code). The ``starter``-marked
test at the end uses the real converted models when they exist under ``llasm.io.llasm_home()``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llasm.io import llasm_home
from llasm.weights import ct2, starter, whisper_ct2
from llasm.weights.gguf import convert_gguf


def _tiny_whisper(seed: int = 0):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=96, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=20, max_target_positions=12, pad_token_id=0, bos_token_id=1, eos_token_id=0,
        decoder_start_token_id=1,
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # make biases/norms non-trivial so a mix-up would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.normal_()
    return model


def _write_ct2(model, path: Path, dtype) -> dict[str, np.ndarray]:
    variables, aliases = whisper_ct2.whisper_ct2_variables(
        model.state_dict(), (model.config.encoder_attention_heads, model.config.decoder_attention_heads)
    )
    variables = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in variables.items()}
    variables.pop("decoder/projection/weight", None)  # stored as an alias, like CTranslate2 does
    ct2.write_ct2_model(path, variables, aliases=aliases)
    return variables


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_ct2_whisper_round_trip_is_exact(tmp_path, dtype):
    model = _tiny_whisper()
    _write_ct2(model, tmp_path / "model.bin", dtype)

    read = ct2.read_ct2_model(tmp_path / "model.bin")
    assert (read.binary_version, read.spec_name, read.spec_revision) == (6, "WhisperSpec", 3)
    assert read.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert read["decoder/projection/weight"] is read["decoder/embeddings/weight"]
    assert whisper_ct2.whisper_dims(read)["encoder_layers"] == 2

    out = whisper_ct2.convert_whisper_ct2(tmp_path / "model.bin", None, tmp_path / "hf", dtype=dtype)
    got = load_file(out / "model.safetensors")
    want = {k: v.to(getattr(torch, dtype)) for k, v in model.state_dict().items() if k != "proj_out.weight"}
    assert set(got) == set(want)
    for name, value in want.items():
        assert torch.equal(got[name], value), name

    fe = json.loads((out / "preprocessor_config.json").read_text())
    assert fe["feature_size"] == 16 and fe["sampling_rate"] == 16000

    from transformers import WhisperForConditionalGeneration

    loaded = WhisperForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    assert loaded.proj_out.weight.data_ptr() == loaded.model.decoder.embed_tokens.weight.data_ptr()
    feats = torch.randn(1, 16, 40)
    dec = torch.tensor([[1, 5, 7]])
    with torch.no_grad():
        a = model.float()(input_features=feats, decoder_input_ids=dec).logits
        b = loaded(input_features=feats, decoder_input_ids=dec).logits
    tol = 0 if dtype == "float32" else 5e-2
    assert torch.allclose(a, b, atol=tol) if tol else torch.equal(a, b)


def test_ct2_reader_rejects_garbage(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\x63\x00\x00\x00garbage")
    with pytest.raises(ct2.CT2FormatError, match="unsupported CTranslate2 binary version 99"):
        ct2.read_ct2_model(bad)
    model = _tiny_whisper()
    _write_ct2(model, bad, "float16")
    bad.write_bytes(bad.read_bytes()[:5000])
    with pytest.raises(ct2.CT2FormatError, match="truncated"):
        ct2.read_ct2_model(bad)


def test_ct2_reader_old_binary_version_and_int8(tmp_path):
    """Binary version 3 (item size instead of dtype id) and int8 weights with a per-row scale."""
    import struct

    w = np.arange(12, dtype=np.int8).reshape(3, 4)
    scale = np.array([2.0, 4.0, 8.0], dtype=np.float32)
    path = tmp_path / "model.bin"
    with open(path, "wb") as f:
        def s(text):
            f.write(struct.pack("<H", len(text) + 1) + text.encode() + b"\0")

        f.write(struct.pack("<I", 3)); s("TestSpec"); f.write(struct.pack("<I", 1)); f.write(struct.pack("<I", 2))
        for name, arr in (("a/weight", w), ("a/weight_scale", scale)):
            s(name); f.write(struct.pack("<B", arr.ndim)); f.write(struct.pack(f"<{arr.ndim}I", *arr.shape))
            f.write(struct.pack("<BI", arr.itemsize, arr.size)); f.write(arr.tobytes())
        f.write(struct.pack("<I", 1)); s("b/weight"); s("a/weight")
    m = ct2.read_ct2_model(path)
    assert m.binary_version == 3 and m["a/weight"].dtype == np.int8
    np.testing.assert_allclose(m.weight("b/weight"), w / scale[:, None])


def test_sha256_mismatch_names_file_and_hashes(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"hello")
    good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert starter.verify_sha256(f, good) == good
    with pytest.raises(starter.ChecksumError) as err:
        starter.verify_sha256(f, "0" * 64)
    msg = str(err.value)
    assert str(f) in msg and "0" * 64 in msg and good in msg


def _fake_spec(tmp_path: Path, sha: str) -> starter.StarterModel:
    return starter.StarterModel(
        name="tiny-whisper", kind="whisper-ct2", packages=(("fake-pkg", "1.0"),),
        parts=("fake_pkg/data/model.bin.part1", "fake_pkg/data/model.bin.part2"), sha256=sha,
        description="test", extras={"tokenizer_dir": "fake_pkg/data"},
    )


def test_ensure_is_atomic_idempotent_and_checks_sha(tmp_path, monkeypatch, capsys):
    pkg = tmp_path / "src" / "fake-pkg"
    (pkg / "fake_pkg" / "data").mkdir(parents=True)
    _write_ct2(_tiny_whisper(), tmp_path / "model.bin", "float16")
    blob = (tmp_path / "model.bin").read_bytes()
    (pkg / "fake_pkg/data/model.bin.part1").write_bytes(blob[:1000])
    (pkg / "fake_pkg/data/model.bin.part2").write_bytes(blob[1000:])
    (pkg / "fake_pkg/data/tokenizer.json").write_text("{}")  # located, but the test converter ignores it
    monkeypatch.setattr(starter, "install_package", lambda name, version, pkgs_dir: pkg)
    home = tmp_path / "home"

    # A wrong sha256 is a hard error and leaves nothing behind.
    monkeypatch.setattr(starter, "STARTER_MODELS", {"tiny-whisper": _fake_spec(tmp_path, "f" * 64)})
    with pytest.raises(starter.ChecksumError, match="model.bin"):
        starter.ensure_starter_models(["tiny-whisper"], home, keep_packages=True)
    assert sorted(p.name for p in home.iterdir()) == []

    import hashlib

    sha = hashlib.sha256(blob).hexdigest()
    monkeypatch.setattr(starter, "STARTER_MODELS", {"tiny-whisper": _fake_spec(tmp_path, sha)})
    calls = []
    real = whisper_ct2.convert_whisper_ct2

    def convert(model_bin, src_dir, out_dir, **kw):
        calls.append(model_bin)
        return real(model_bin, None, out_dir, **kw)

    monkeypatch.setattr(whisper_ct2, "convert_whisper_ct2", convert)  # starter imports it where it converts
    paths = starter.ensure_starter_models("tiny-whisper", home, keep_packages=True)
    assert paths == {"tiny-whisper": home / "tiny-whisper"}
    assert json.loads((home / "tiny-whisper" / starter.MARKER).read_text())["sha256"] == sha
    assert (home / "tiny-whisper" / "model.safetensors").is_file()
    assert sorted(p.name for p in home.iterdir()) == ["tiny-whisper"]  # no temp dirs left
    assert starter.is_installed("tiny-whisper", home)

    capsys.readouterr()
    assert starter.main(["--home", str(home), "--only", "tiny-whisper"]) == 0
    assert "already there" in capsys.readouterr().out
    assert len(calls) == 1
    starter.ensure_starter_models(["tiny-whisper"], home, force=True, keep_packages=True)
    assert len(calls) == 2
    assert sorted(p.name for p in home.iterdir()) == ["tiny-whisper"]

    assert starter.main(["--home", str(home), "--only", "nope"]) == 1


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def test_gguf_round_trip(tmp_path):
    """A tiny float32 llama GGUF (written with gguf's GGUFWriter) converts back to the exact weights."""
    gguf = pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                      rms_norm_eps=1e-5, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}

    def permute(w, n_head):  # llama.cpp's q/k row order (transformers undoes it on load)
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_block_count(2)
    w.add_feed_forward_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(8)
    w.add_rope_freq_base(10000.0)
    b2u = _bytes_to_unicode()
    tokens = [b2u[i] for i in range(256)] + ["Ġt", "Ġth", "he"]
    tokens += [f"<extra{i}>" for i in range(300 - len(tokens) - 2)] + ["<|endoftext|>", "<|im_end|>"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * 298 + [3, 3])
    w.add_token_merges(["Ġ t", "Ġt h", "h e"])
    w.add_bos_token_id(298)
    w.add_eos_token_id(298)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}")
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    hf_to_gguf = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                  "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                  "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                  "mlp.down_proj": "ffn_down"}
    for i in range(2):
        for hf, gg in hf_to_gguf.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    for k, v in sd.items():
        if k.endswith("q_proj.weight"):
            v = permute(v, 4)
        elif k.endswith("k_proj.weight"):
            v = permute(v, 2)
        w.add_tensor(names[k], v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    out = convert_gguf(path, tmp_path / "hf", dtype="float32", eos_tokens=("<|im_end|>",))
    got = load_file(out / "model.safetensors")
    assert set(got) == set(sd)
    for k in sd:
        assert np.array_equal(got[k].numpy(), sd[k]), k
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [298, 299]
    tok = AutoTokenizer.from_pretrained(out)
    assert "<|im_end|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)


# ---------------------------------------------------------------------------------------------
# real starter models (only when converted ones exist)
# ---------------------------------------------------------------------------------------------


@pytest.mark.starter
def test_whisper_base_transcribes_espeak_sentence(tmp_path):
    home = Path(llasm_home())
    if not starter.is_installed("whisper-base", home):
        pytest.skip(f"whisper-base starter model not converted under {home} (run `python -m llasm.weights.starter`)")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    import soundfile as sf
    import soxr
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    wav = tmp_path / "fox.wav"
    subprocess.run(["espeak-ng", "-v", "en", "-s", "150", "-w", str(wav),
                    "the quick brown fox jumps over the lazy dog"], check=True)
    audio, sr = sf.read(wav, dtype="float32")
    audio = soxr.resample(audio, sr, 16_000)
    path = home / "whisper-base"
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    feats = WhisperFeatureExtractor.from_pretrained(path)(audio, sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(feats.input_features, language="en", task="transcribe", max_new_tokens=40)
    text = WhisperTokenizer.from_pretrained(path).decode(out[0], skip_special_tokens=True).lower()
    words = {"quick", "brown", "fox", "jumps", "over", "lazy", "dog"}
    assert len(words & set(text.replace(".", " ").replace(",", " ").split())) >= 6, text


@pytest.mark.starter
def test_starter_yaml_builds_a_real_bilingual_speech_llm():
    """configs/model/starter.yaml on the converted weights: text answers are the base LLM's, audio fits."""
    import llasm
    from llasm.io import llasm_home

    home = Path(llasm_home())
    if not (home / "whisper-base" / "starter.json").exists() or not (home / "qwen2.5-0.5b-instruct" / "starter.json").exists():
        pytest.skip("starter models not converted (run `make starter`)")
    model, processor = llasm.build_model(Path(__file__).resolve().parents[1] / "configs" / "model" / "starter.yaml")
    assert "paris" in model.chat(text="What is the capital of France?", max_new_tokens=16).lower()
    assert "北京" in model.chat(text="中国的首都是哪里？", max_new_tokens=16)
    audio = np.zeros(16000 * 3, dtype=np.float32) + 0.01 * np.random.default_rng(0).standard_normal(48000).astype(np.float32)
    batch = processor.apply_chat_template([{"role": "user", "content": [{"type": "audio", "audio": audio}]},
                                           {"role": "assistant", "content": "ok"}])
    assert int((batch["input_ids"] == model.config.audio_patch_token_id).sum()) == 19  # 3 s -> 150 frames / 8
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)
