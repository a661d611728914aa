"""Device and precision: one decision (``llasm.device``), and every tool puts its model and every
tensor it feeds the model there. Placement is checked on the CPU with the stand-in accelerator of
``tests/fake_cuda.py``: it computes real numbers on the CPU and raises where a GPU run would fail
with "expected all tensors to be on the same device"."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from accelerate import Accelerator
from conftest import TINY_YAML, build_tiny, tone
from fake_cuda import ACCELERATOR, Accelerated, DeviceMismatch, accelerator, on_accelerator
from test_training import config, make_data


# -- the decision ---------------------------------------------------------------------------------
def test_device_and_precision_defaults(monkeypatch):
    from llasm import device as D

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.resolve_device(None) == D.resolve_device("auto") == torch.device("cpu")
    assert D.resolve_dtype("auto", "cpu") is torch.float32 and D.resolve_mixed_precision("auto", "cpu") == "no"
    with pytest.raises(ValueError, match="device 'cuda': no CUDA device is available"):
        D.resolve_device("cuda")
    with pytest.raises(ValueError, match="dtype must be one of"):
        D.resolve_dtype("fp8", "cpu")
    assert D.resolve_mixed_precision("bf16", "cpu") == "bf16"  # explicit CPU autocast stays
    assert D.resolve_mixed_precision(False, "cpu") == "no"  # `mixed_precision: no` in YAML 1.1

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert D.resolve_device(None).type == "cuda"
    assert D.resolve_dtype(None, "cuda") is torch.bfloat16 and D.resolve_mixed_precision("auto", "cuda") == "bf16"
    with pytest.raises(ValueError, match="only 2 CUDA device"):
        D.resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # V100, T4
    assert D.resolve_dtype(None, "cuda") is torch.float16 and D.resolve_mixed_precision(None, "cuda") == "fp16"


def test_to_device_moves_every_tensor():
    from collections import namedtuple

    from llasm.device import to_device

    Pair = namedtuple("Pair", "a b")
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "ids": ["x", "y"],
             "nested": [torch.zeros(1), (torch.zeros(2), "keep")], "pair": Pair(torch.zeros(1), 3)}
    with accelerator() as device:
        moved = to_device(batch, device)
        assert on_accelerator(moved["input_ids"]) and moved["ids"] == ["x", "y"]
        assert on_accelerator(moved["nested"][0]) and on_accelerator(moved["nested"][1][0])
        assert moved["nested"][1][1] == "keep" and isinstance(moved["pair"], Pair) and on_accelerator(moved["pair"].a)


def test_the_stand_in_accelerator_catches_a_cpu_tensor():
    """What the placement tests rely on: mixing raises, moving and indexing keep values."""
    x = torch.arange(6.0).reshape(2, 3)
    with accelerator() as device:
        y = x.to(device)
        assert isinstance(y, Accelerated) and torch.equal(y[[1], 1:].cpu(), x[[1], 1:])
        with pytest.raises(DeviceMismatch, match="cpu tensor of shape"):
            y + x


# -- failure 1: the trainer's batches ---------------------------------------------------------------
@pytest.mark.parametrize("cache", [True, False])
def test_trainer_runs_every_batch_on_its_device(tmp_path, monkeypatch, cache):
    """accelerate places the model on ``accelerator.device``; the trainer used to leave the batches
    on the CPU (and, with the encoder cache, hand CPU mel to the tower on the GPU). The same run on
    the stand-in accelerator gives the CPU run's losses."""
    from llasm.training import Trainer, load_config

    data = make_data(tmp_path / "data")
    cfg = config(tmp_path / "cpu", data, **{"encoder_cache.enabled": cache, "encoder_cache.dir": str(tmp_path / "c1")})
    expected = [loss for _, loss in Trainer(load_config(cfg)).fit()["losses"]]
    monkeypatch.setattr(Accelerator, "device", property(lambda self: ACCELERATOR))
    cfg = config(tmp_path / "acc", data, **{"encoder_cache.enabled": cache, "encoder_cache.dir": str(tmp_path / "c2")})
    with accelerator():
        trainer = Trainer(load_config(cfg))
        assert all(on_accelerator(p) for p in trainer.model.parameters())
        losses = [loss for _, loss in trainer.fit()["losses"]]
    np.testing.assert_allclose(losses, expected, rtol=1e-4)


# -- failure 7: chat, serve, evaluation, the vocoder and units -----------------------------------
@pytest.fixture()
def checkpoint(tmp_path):
    model, _ = build_tiny()
    model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_chat_cli_puts_the_model_on_the_device(checkpoint, tmp_path, capsys, monkeypatch):
    from llasm.apps import chat_cli
    from llasm.modeling import LlasmForConditionalGeneration

    wav = tmp_path / "q.wav"
    sf.write(wav, tone(1.0), 16000)
    argv = ["--model", str(checkpoint), "--audio", str(wav), "--max-new-tokens", "4", "--once"]
    assert chat_cli.main(argv + ["--device", "cpu"]) == 0
    on_cpu = capsys.readouterr().out
    seen = []
    forward = LlasmForConditionalGeneration.forward

    @functools.wraps(forward)  # generate() reads forward's signature
    def recording(self, *args, **kwargs):
        seen.append({k: v.device for k, v in kwargs.items() if isinstance(v, torch.Tensor)} | {"model": self.device})
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LlasmForConditionalGeneration, "forward", recording)
    with accelerator() as device:
        assert chat_cli.main(argv + ["--device", str(device)]) == 0
    assert capsys.readouterr().out == on_cpu
    assert seen and all(d == ACCELERATOR for call in seen for d in call.values())
    assert chat_cli.main(argv + ["--device", "cuda"]) == 1  # asked for, missing: said so
    assert "no CUDA device is available" in capsys.readouterr().err


def test_serve_puts_the_model_on_the_device(checkpoint, monkeypatch):
    from llasm.apps import serve

    built = {}
    monkeypatch.setattr(serve, "build_app", lambda model, **kw: built.setdefault("model", model))
    monkeypatch.setattr(serve, "launch", lambda app, **kw: None)
    with accelerator() as device:
        assert serve.main(["--model", str(checkpoint), "--device", str(device)]) == 0
        model = built["model"]
        assert all(on_accelerator(p) for p in model.parameters()) and not model.training
        history = list(serve.respond([], tone(1.0), "hi", model=model, max_new_tokens=3))[-1]
    assert history[-1]["role"] == "assistant" and "error" not in history[-1], history[-1]


def test_evaluation_batches_on_the_device(checkpoint, tmp_path, monkeypatch):
    """``llasm eval`` answers ``--batch-size`` prompts per generate call on ``--device``; the replies
    are the ones the model gives each prompt alone."""
    import importlib

    from llasm.modeling import LlasmForConditionalGeneration

    eval_run = importlib.import_module("llasm.evaluation.run")  # the package re-exports a function named run
    (tmp_path / "wav").mkdir()
    asr = []
    for i in range(5):
        sf.write(tmp_path / "wav" / f"{i}.wav", tone(0.6 + 0.2 * i, seed=i), 16000)
        asr.append({"id": f"a{i}", "lang": "en", "audios": [f"wav/{i}.wav"], "split": "test",
                    "conversations": [{"from": "human", "value": "<speech>\nTranscribe."},
                                      {"from": "gpt", "value": "hello there"}]})
    (tmp_path / "asr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in asr))
    calls = []
    generate = LlasmForConditionalGeneration.generate

    def recording(self, *args, **kwargs):
        calls.append((kwargs["input_ids"].shape[0], kwargs["input_ids"].device, self.device))
        return generate(self, *args, **kwargs)

    args = ["--model", str(checkpoint), "--asr-data", str(tmp_path / "asr.jsonl"), "--tasks", "asr",
            "--no-cascade", "--no-progress", "--max-new-tokens", "6"]
    parser = eval_run.build_parser()
    monkeypatch.setattr(LlasmForConditionalGeneration, "generate", recording)
    with accelerator() as device:
        batched = eval_run.run(parser.parse_args(args + ["--output", str(tmp_path / "b"), "--device", str(device),
                                                         "--batch-size", "4"]))
    assert [rows for rows, _, _ in calls] == [4, 1], (batched["errors"], batched["notes"])
    assert all(d == m == ACCELERATOR for _, d, m in calls)
    calls.clear()
    alone = eval_run.run(parser.parse_args(args + ["--output", str(tmp_path / "a"), "--device", "cpu",
                                                   "--batch-size", "1"]))
    assert len(calls) == 5
    hyps = [[r["hypotheses"] for r in report["items"]["asr"]] for report in (batched, alone)]
    assert hyps[0] == hyps[1] and not batched["errors"]


def test_vocoder_trainer_runs_on_the_device(tmp_path):
    """configs/vocoder.yaml is meant for a GPU: the trainer places its models on ``train.device``
    (auto: CUDA when present), moves every batch there and keeps checkpoints on the CPU; its sample
    synthesis (ground-truth durations) runs there too. (Training steps themselves run in
    tests/test_vocoder.py: the stand-in cannot take a backward pass through the STFT's complex views.)"""
    from test_vocoder import tiny_config, train_config, write_sine_dataset

    from llasm.device import to_device
    from llasm.speech.vocoder_training import VocoderTrainer

    config = tiny_config()
    manifest = write_sine_dataset(tmp_path)
    cpu = VocoderTrainer(config, train_config(tmp_path / "cpu", manifest, device="cpu"))
    batch = cpu.dataset.batch(0, 2)
    with torch.no_grad():
        expected = cpu.mel(cpu.generator(batch["units"], batch["durations"]))
    with accelerator() as device:
        trainer = VocoderTrainer(config, train_config(tmp_path / "acc", manifest, device=str(device)))
        assert all(on_accelerator(p) for m in (trainer.generator, trainer.mpd, trainer.msd) for p in m.parameters())
        moved = to_device(batch, trainer.device)
        with torch.no_grad():
            mel = trainer.mel(trainer.generator(moved["units"], moved["durations"]))
        torch.testing.assert_close(mel.cpu(), expected, rtol=1e-4, atol=1e-4)
        assert trainer.write_sample().exists()  # synthesize(units, durations) on the device
        saved = trainer.save_checkpoint()
    assert (saved / "state.safetensors").exists()


def test_token2wav_trainer_runs_on_the_device(tmp_path):
    """The unit -> mel decoder's trainer (train/train_token2wav.py) follows ``train.device`` too."""
    from llasm.audio import save_audio
    from llasm.device import to_device
    from llasm.io import write_jsonl
    from llasm.speech.mel_training import MelTrainConfig, UnitMelTrainer, load_token2wav_configs
    from llasm.speech.token2wav import Token2WavConfig

    rows = []
    for i in range(2):
        save_audio(tmp_path / f"c{i}.wav", tone(1.0, seed=i, freq=150.0 + 50 * i))
        rows.append({"id": f"c{i}", "audio": f"c{i}.wav", "units": [1, 2, 3, 4, 5] * 5, "durations": [2] * 25})
    write_jsonl(tmp_path / "m.jsonl", rows)
    _, decoder, _ = load_token2wav_configs("configs/token2wav_cpu.yaml", [
        "mel_decoder.num_units=20", "mel_decoder.hidden_size=16", "mel_decoder.encoder_layers=1",
        "mel_decoder.decoder_layers=1"])
    t2w = Token2WavConfig(mel_vocoder="griffin_lim", griffin_lim_iterations=2)

    def trainer(out, device):
        return UnitMelTrainer(t2w, decoder, MelTrainConfig(
            train_manifest=str(tmp_path / "m.jsonl"), output_dir=str(tmp_path / out), batch_size=2, segment_frames=30,
            max_steps=1, progress=False, resume="never", device=device))

    cpu = trainer("cpu", "cpu")
    batch = cpu.dataset.batch(0, 2, 30)
    with torch.no_grad():
        expected = cpu.model(batch["units"], batch["durations"])["mel"]
    spoken = cpu.model.generate([1, 2, 3], [2, 2, 2])
    with accelerator() as device:
        on_device = trainer("acc", str(device))
        assert all(on_accelerator(p) for p in on_device.model.parameters())
        moved = to_device(batch, on_device.device)
        with torch.no_grad():
            mel = on_device.model(moved["units"], moved["durations"])["mel"]
        torch.testing.assert_close(mel.cpu(), expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(on_device.model.generate([1, 2, 3], [2, 2, 2]), spoken, rtol=1e-4, atol=1e-4)
        assert (on_device.save_checkpoint() / "state.safetensors").exists()


# -- failure 6: LoRA precision -------------------------------------------------------------------------
def test_lora_adapters_of_a_bf16_model_train_in_fp32(tmp_path):
    """peft's fp32 upcast (``autocast_adapter_dtype``) for the adapters of a bf16 LLM: their updates
    are not rounded away; the base weights stay bf16 and the forward runs."""
    import yaml

    from llasm.io import load_yaml
    from llasm.training import Trainer, load_config

    spec = load_yaml(TINY_YAML) | {"dtype": "bfloat16"}
    (tmp_path / "bf16.yaml").write_text(yaml.safe_dump(spec))
    data = make_data(tmp_path / "data")
    cfg = config(tmp_path, data, **{"model": str(tmp_path / "bf16.yaml"), "trainable.language_model": "lora",
                                    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}})
    trainer = Trainer(load_config(cfg))
    lora = {n: p for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert lora and {p.dtype for p in lora.values()} == {torch.float32}
    base = trainer.model.language_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert base.dtype == torch.bfloat16
    before = {n: p.detach().clone() for n, p in lora.items()}
    result = trainer.fit()
    assert all(np.isfinite(loss) for _, loss in result["losses"])
    assert any(not torch.equal(p, before[n]) for n, p in lora.items() if "lora_B" in n)


# -- failure 8: DeepSpeed precision, resume, attention ---------------------------------------------------
def test_deepspeed_precision_comes_from_the_training_config(tmp_path):
    from llasm.training.config import OptimConfig
    from llasm.training.distributed import deepspeed_config

    train = OptimConfig(batch_size=4, grad_accum=2, max_grad_norm=0.5)
    for name in ("zero2", "zero3"):
        path = str(Path(__file__).parents[1] / "configs" / "deepspeed" / f"{name}.json")
        bf16 = deepspeed_config(path, train, world_size=8, mixed_precision="bf16")
        assert bf16["bf16"]["enabled"] is True and bf16["fp16"]["enabled"] is False
        assert bf16["train_batch_size"] == 64 and bf16["gradient_clipping"] == 0.5
        fp32 = deepspeed_config(path, train, world_size=1, mixed_precision="no")
        assert not fp32["bf16"]["enabled"] and not fp32["fp16"]["enabled"]
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": False}}))
    with pytest.raises(ValueError, match="bf16.enabled=False but the training config gives True"):
        deepspeed_config(str(fixed), train, world_size=1, mixed_precision="bf16")


def test_resume_reads_a_checkpoint_saved_on_a_gpu(tmp_path):
    """A checkpoint written on a GPU stores its optimizer state as CUDA tensors; resuming on a machine
    (or rank) without that GPU must read it onto the CPU (``map_location``) first."""
    from llasm.training import Trainer, load_config

    data = make_data(tmp_path / "data")
    cfg = config(tmp_path, data, **{"train.max_steps": 2, "train.save_every": 1, "resume": "none"})
    Trainer(load_config(cfg)).fit()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)

    def cuda_tag(obj):  # what torch.save records for a tensor saved from cuda:0
        return "cuda:0" if isinstance(obj, torch.storage.TypedStorage) or isinstance(obj, torch.UntypedStorage) else None

    torch.serialization.register_package(0, cuda_tag, lambda obj, location: None)
    try:
        torch.save(state, checkpoint / "optimizer.pt")
    finally:
        torch.serialization._package_registry.pop(0)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(checkpoint / "optimizer.pt", weights_only=True)
    cfg = config(tmp_path, data, **{"train.max_steps": 2, "resume": str(checkpoint)})
    trainer = Trainer(load_config(cfg))
    assert trainer.maybe_resume() == str(checkpoint) and trainer.step == 1


def test_sdpa_and_eager_give_the_same_logits():
    """``attn_implementation`` (model YAML) reaches the LLM and the Whisper tower; padded audio in a
    batch gives the same logits under eager (4-D additive mask) and sdpa (4-D boolean mask)."""
    model, processor = build_tiny(attn_implementation="eager")
    assert model.audio_tower.config._attn_implementation == model.language_model.config._attn_implementation == "eager"
    turns = [[{"role": "user", "content": [{"type": "audio", "audio": tone(s, seed=i)}]}]
             for i, s in enumerate((0.7, 1.6))]
    inputs = processor.apply_chat_template(turns, add_generation_prompt=True)
    assert inputs["feature_attention_mask"].sum(-1).tolist()[0] < inputs["feature_attention_mask"].shape[1]  # padded
    with torch.no_grad():
        eager = model(**inputs).logits
        from llasm.builder import set_attention

        set_attention(model, "sdpa")
        assert model.audio_tower.config._attn_implementation == "sdpa"
        sdpa = model(**inputs).logits
    real = inputs["attention_mask"].bool()  # left padding: a padded position's logits mean nothing
    assert not real.all()
    torch.testing.assert_close(sdpa[real], eager[real], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        set_attention(model, "flash")


def test_the_tower_hands_a_varlen_attention_a_2d_padding_mask(monkeypatch):
    """flash_attention_2 unpads with a 2-D ``(B, T)`` padding mask; the tower builds its mask through
    transformers' mask interface, so an implementation registered with FlashAttention-2's mask form
    gets exactly that, and (computing plain attention from it) encodes as sdpa does."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    masks = []

    def varlen(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        bias = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        return sdpa_attention_forward(module, query, key, value, bias, **kwargs)

    AttentionInterface.register("test_varlen", varlen)
    AttentionMaskInterface.register("test_varlen", flash_attention_mask)
    model, processor = build_tiny()
    feats = processor.apply_chat_template([[{"role": "user", "content": [{"type": "audio", "audio": tone(s)}]}]
                                           for s in (0.6, 1.4)], add_generation_prompt=True)
    tower = model.audio_tower
    with torch.no_grad():
        reference = tower(feats["input_features"], attention_mask=feats["feature_attention_mask"]).last_hidden_state
        monkeypatch.setattr(tower.config, "_attn_implementation_internal", "test_varlen")
        varlen_out = tower(feats["input_features"], attention_mask=feats["feature_attention_mask"]).last_hidden_state
    assert masks and all(m is not None and m.dim() == 2 for m in masks)
    keep = masks[0].bool()
    torch.testing.assert_close(varlen_out[keep], reference[keep], rtol=1e-4, atol=1e-5)


def test_cpu_has_native_bf16_asks_for_the_bf16_instructions(monkeypatch):
    """What the speech demo asks before it trains its head under bf16 autocast on the CPU: the AVX512-BF16 or
    AMX instructions, not oneDNN's bf16 check (which says yes on any AVX-512 CPU, where bf16 is emulated)."""
    from llasm.device import cpu_has_native_bf16

    assert cpu_has_native_bf16() is bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    for avx512_bf16, amx, native in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert cpu_has_native_bf16() is native  # a Cascade Lake Xeon: AVX-512, oneDNN says bf16, but no native bf16
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert cpu_has_native_bf16() is False  # a torch without the check: assume emulated
