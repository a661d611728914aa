"""Training: data mixture, stages (frozen parts stay bit-identical), LoRA, DDP, DeepSpeed,
SIGKILL + resume, NaN stop, encoder cache, configs, the final checkpoint chatting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ROOT, TINY_YAML, build_tiny, tone

TRAIN = ROOT / "train" / "train.py"


def make_data(root: Path, n: int = 8) -> Path:
    """A few ASR rows (tones of 0.5-2 s), a text-only row and a spoken multi-turn row."""
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        sf.write(root / "wavs" / f"{i}.wav", tone(0.5 + 0.25 * (i % 7), seed=i, freq=200 + 30 * i), 16000)
        rows.append({"id": f"asr-{i}", "lang": "en", "audios": [f"wavs/{i}.wav"],
                     "conversations": [{"from": "human", "value": "<speech>\nTranscribe the audio."},
                                       {"from": "gpt", "value": f"hello number {i}"}]})
    rows.append({"id": "text-0", "lang": "zh", "audios": [], "system": "You are helpful.",
                 "conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"}]})
    rows.append({"id": "multi-0", "lang": "en", "audios": ["wavs/0.wav", "wavs/1.wav"],
                 "conversations": [{"from": "human", "value": "<speech>"}, {"from": "gpt", "value": "one"},
                                   {"from": "human", "value": "and <speech>?"}, {"from": "gpt", "value": "two"}]})
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def config(tmp_path: Path, data: Path, **over) -> dict:
    cfg = {
        "model": str(TINY_YAML), "output_dir": str(tmp_path / "out"), "seed": 0, "resume": "auto",
        "trainable": {"audio_tower": "frozen", "adaptor": "full", "language_model": "frozen"},
        "data": {"sources": [{"path": str(data)}], "group_size": 2},
        "encoder_cache": {"enabled": True, "dir": str(tmp_path / "cache")},
        "train": {"batch_size": 2, "max_steps": 2, "lr": 1e-3, "save_every": 100, "scheduler": "constant"},
    }
    for key, value in over.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


@pytest.fixture()
def data(tmp_path):
    return make_data(tmp_path / "data")


# -- data ---------------------------------------------------------------------------------------
def test_row_to_messages_orders_audio(tmp_path):
    from llasm.data.dataset import row_to_messages

    row = {"id": "x", "audios": ["a.wav", "b.wav"], "system": "S",
           "conversations": [{"from": "human", "value": "<speech>\nwhat? <speech>"}, {"from": "gpt", "value": "ok"}]}
    messages = row_to_messages(row, tmp_path)
    assert messages[0] == {"role": "system", "content": "S"}
    parts = messages[1]["content"]
    assert [p["type"] for p in parts] == ["audio", "text", "audio"]
    assert parts[0]["audio"].endswith("a.wav") and parts[2]["audio"].endswith("b.wav")
    assert messages[2] == {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}
    with pytest.raises(ValueError, match="audios"):
        row_to_messages({"id": "y", "audios": ["a.wav"], "conversations": [{"from": "human", "value": "hi"}]})


def test_bad_rows_are_rejected_not_fatal(tmp_path, tiny):
    from llasm.data.dataset import Collator, ConversationDataset, Source

    _, processor = tiny
    data = make_data(tmp_path, n=2)
    (tmp_path / "wavs" / "broken.wav").write_bytes(b"RIFF....not audio")
    with open(data, "a") as f:
        f.write(json.dumps({"id": "missing", "audios": ["wavs/nope.wav"],
                            "conversations": [{"from": "human", "value": "<speech>"}, {"from": "gpt", "value": "x"}]}) + "\n")
        f.write(json.dumps({"id": "broken", "audios": ["wavs/broken.wav"],
                            "conversations": [{"from": "human", "value": "<speech>"}, {"from": "gpt", "value": "x"}]}) + "\n")
    rejects = tmp_path / "rejects.jsonl"
    ds = ConversationDataset([Source(str(data))], processor, rejects_path=str(rejects))
    batch = Collator(processor, ds)([ds[i] for i in range(len(ds))])
    assert "broken" not in batch["ids"] and "asr-0" in batch["ids"]
    reasons = {r["id"]: r["reason"] for r in map(json.loads, rejects.read_text().splitlines())}
    assert "not found" in reasons["missing"] and "broken" in reasons
    assert batch["input_features"].shape[0] == len(batch["audio_keys"])


def test_mixture_sampler_weights_and_determinism(tmp_path, tiny):
    from llasm.data.dataset import ConversationDataset, MixtureBatchSampler, Source

    _, processor = tiny
    a, b = make_data(tmp_path / "a", n=4), make_data(tmp_path / "b", n=4)
    ds = ConversationDataset([Source(str(a), 9.0), Source(str(b), 1.0)], processor)
    sampler = MixtureBatchSampler(ds, batch_size=4, seed=1, samples_per_epoch=400)
    batches = sampler.epoch_batches(0)
    assert batches == MixtureBatchSampler(ds, batch_size=4, seed=1, samples_per_epoch=400).epoch_batches(0)
    share_a = np.mean([ds.source_of[i] == 0 for batch in batches for i in batch])
    assert 0.8 < share_a < 0.97
    halves = [MixtureBatchSampler(ds, 4, seed=1, samples_per_epoch=400, rank=r, world_size=2).epoch_batches(0)
              for r in (0, 1)]
    assert len(halves[0]) == len(halves[1]) and halves[0][0] != halves[1][0]


# -- configs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["stage1_asr_align", "stage2_instruct", "stage2_instruct_lora", "stage3_unit_head"])
def test_stage_yamls_load(name):
    from llasm.training import load_config

    cfg = load_config(ROOT / "configs" / f"{name}.yaml", ["train.lr=1e-4", "data.num_workers=0"])
    assert cfg.train.lr == 1e-4 and cfg.data.num_workers == 0
    assert (ROOT / cfg.model).exists()
    assert cfg.trainable["audio_tower"] == "frozen"
    for ds in ("zero2", "zero3"):
        assert json.loads((ROOT / "configs" / "deepspeed" / f"{ds}.json").read_text())["zero_optimization"]


def test_unknown_config_key_is_an_error():
    from llasm.training import load_config

    with pytest.raises(ValueError, match="unknown config key 'train.lrr'"):
        load_config({"train": {"lrr": 1}})


# -- single-process stages ----------------------------------------------------------------------
def run_trainer(cfg):
    from llasm.training import Trainer, load_config

    trainer = Trainer(load_config(cfg))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.fit()
    return trainer, before, result


def test_bf16_model_trains_its_small_parts_in_fp32(tmp_path, data):
    """A bf16 model: the adaptor and marker rows train in fp32 (bf16 would drop Adam's small late
    updates), the frozen parts stay bf16, and the trained model chats and saves/loads."""
    import yaml

    from llasm.io import load_yaml
    from llasm.modeling import LlasmForConditionalGeneration

    spec = load_yaml(TINY_YAML) | {"dtype": "bfloat16"}
    (tmp_path / "bf16.yaml").write_text(yaml.safe_dump(spec))
    trainer, before, result = run_trainer(config(tmp_path, data, model=str(tmp_path / "bf16.yaml")))
    model = trainer.model
    assert result["steps"] == 2 and all(np.isfinite(l) for _, l in result["losses"])
    assert {p.dtype for p in model.adaptor.parameters()} == {torch.float32}
    assert model.audio_marker_embeddings.weight.dtype == torch.float32
    assert {p.dtype for p in model.language_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.audio_tower.parameters()} == {torch.bfloat16}
    assert any(not torch.equal(p.float(), before[n].float()) for n, p in model.named_parameters() if p.requires_grad)
    model.eval()
    assert isinstance(model.chat(audio=tone(1.0), max_new_tokens=3), str)
    loaded = LlasmForConditionalGeneration.from_pretrained(result["final"], dtype="bfloat16")
    torch.testing.assert_close(loaded.adaptor.proj[1].weight, model.adaptor.proj[1].weight.bfloat16())


def test_stage1_trains_only_adaptor_and_markers(tmp_path, data):
    trainer, before, result = run_trainer(config(tmp_path, data))
    assert result["steps"] == 2 and all(np.isfinite(l) for _, l in result["losses"])
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("adaptor.", "audio_marker_embeddings.")) for n in trainable)
    for name, param in trainer.model.named_parameters():
        if name in trainable:
            continue
        assert torch.equal(param, before[name]), f"frozen {name} changed"
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if n in trainable)
    state = trainer.optimizer.state_dict()["state"]
    assert len(state) == len(trainable)  # optimizer state only for trainable params
    out = Path(tmp_path / "out")
    assert (out / "loss_curve.png").stat().st_size > 0 and list((out / "tensorboard").iterdir())


def test_stage2_full_and_lora(tmp_path, data):
    trainer, before, result = run_trainer(config(tmp_path / "full", data, **{"trainable.language_model": "full"}))
    assert result["steps"] == 2
    up = "language_model.model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(dict(trainer.model.named_parameters())[up], before[up])
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if n.startswith("audio_tower."))

    trainer, before, result = run_trainer(config(tmp_path / "lora", data, **{
        "trainable.language_model": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0,
                                                     "target_modules": ["q_proj", "v_proj"]}}))
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in names)
    assert all("lora_" in n or n.startswith(("adaptor.", "audio_marker_embeddings.")) for n in names)
    for name, param in trainer.model.named_parameters():
        if name not in names:
            assert torch.equal(param, before[name]), name


def test_part_lr_sets_each_parts_learning_rate(tmp_path, data):
    """``train.part_lr`` (LLaVA's mm_projector_lr): here the adaptor and, following it, the marker
    rows get LR 0 while LoRA learns at ``lr``; given as dotted overrides, as on the command line."""
    from llasm.training import Trainer, load_config

    cfg = config(tmp_path, data, **{"trainable.language_model": "lora",
                                    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]}})
    trainer = Trainer(load_config(cfg, ["train.part_lr.adaptor=0.0"]))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    assert sorted(g["lr"] for g in trainer.optimizer.param_groups) == [0.0, 1e-3]
    trainer.fit()
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all("lora_" in n for n in moved)

    with pytest.raises(ValueError, match=r"train.part_lr: unknown part\(s\) \['projector'\]"):
        Trainer(load_config(config(tmp_path, data, output_dir=str(tmp_path / "other")), ["train.part_lr.projector=1e-5"]))


def test_encoder_cache_hits_on_second_epoch_and_run(tmp_path, data):
    from llasm.training import Trainer, load_config

    calls = []
    cfg = config(tmp_path, data, **{"train.max_steps": None, "train.epochs": 2, "resume": "none"})
    trainer = Trainer(load_config(cfg))
    trainer.model.audio_tower.register_forward_hook(lambda *a: calls.append(a[1][0].shape[0]))
    trainer.fit()
    first_epoch_chunks = sum(calls)
    assert first_epoch_chunks == trainer.cache.misses and trainer.cache.hits >= first_epoch_chunks
    # a second run reads the shards written by the first: the tower is never called
    calls.clear()
    cfg["output_dir"] = str(tmp_path / "out2")
    trainer = Trainer(load_config(cfg))
    trainer.model.audio_tower.register_forward_hook(lambda *a: calls.append(1))
    trainer.fit()
    assert calls == [] and trainer.cache.misses == 0 and trainer.cache.hits > 0


def test_a_fresh_run_removes_an_earlier_runs_checkpoints(tmp_path, data, capsys):
    """resume: none in a folder that holds a longer run's checkpoints: they go (with a note), so pruning by
    step number keeps this run's own and a later resume: auto continues this run, not the old one."""
    import yaml

    from llasm.training.resume import list_checkpoints

    run_trainer(config(tmp_path, data, **{"train.max_steps": 4, "train.save_every": 2}))
    out = tmp_path / "out"
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    capsys.readouterr()
    trainer, _, _ = run_trainer(config(tmp_path, data, **{"train.max_steps": 2, "train.save_every": 1, "resume": "none"}))
    assert ("removing 2 checkpoint(s) of an earlier run (checkpoint-2, checkpoint-4); its final/ stays until this "
            "run writes its own") in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    assert yaml.safe_load((out / "train_config.yaml").read_text())["resume"] == "auto"  # rerunning it continues
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # the earlier run's events went
    again, _, _ = run_trainer(config(tmp_path, data, **{"train.max_steps": 2, "train.save_every": 1}))
    assert again.step == 2 and "removing" not in capsys.readouterr().out  # resumed the new run: done, nothing trained
    # TensorBoard shows this run's steps only (the earlier run's events are purged, as losses.jsonl is trimmed),
    # and the resume that trained nothing hid none of them
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    losses = {json.loads(line)["step"]: json.loads(line)["loss"] for line in (out / "losses.jsonl").read_text().splitlines()}
    assert {e.step: pytest.approx(e.value) for e in events.Scalars("train/loss")} == losses and sorted(losses) == [1, 2]


def test_cache_gives_same_loss_as_no_cache(tmp_path, data):
    _, _, cached = run_trainer(config(tmp_path / "a", data))
    _, _, live = run_trainer(config(tmp_path / "b", data, **{"encoder_cache.enabled": False}))
    for (_, x), (_, y) in zip(cached["losses"], live["losses"]):
        assert abs(x - y) < 1e-3  # fp16-rounded states vs fp32


def test_encoder_cache_keys_follow_the_processors_windows_at_30s(tmp_path):
    """pad_to_30s with clips of 30.00-30.01 s: the dataset's cache keys, the features and the placeholders
    count the same windows, and the cached stage-1 loss is the live one."""
    from llasm.data.dataset import Collator, ConversationDataset, Source
    from llasm.training.encoder_cache import EncoderCache, model_key

    model, processor = build_tiny(**{"audio.pad_to_30s": True})
    rows = []
    for n in (479_999, 480_001, 480_159, 480_160):
        sf.write(tmp_path / f"{n}.wav", tone(31.0)[:n], 16000, subtype="FLOAT")
        rows.append({"id": str(n), "audios": [f"{n}.wav"], "conversations": [
            {"from": "human", "value": "<speech>"}, {"from": "gpt", "value": "ok"}]})
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = ConversationDataset([Source(str(tmp_path / "d.jsonl"))], processor, model_key=model_key(model, processor))
    items = [ds[i] for i in range(len(ds))]
    assert [len(item["audio_keys"]) for item in items] == [1, 1, 1, 2]  # 480,160 samples hold a second whole hop
    batch = Collator(processor, ds)(items)
    assert len(batch["audio_keys"]) == batch["input_features"].shape[0] == 5
    assert int((batch["input_ids"] == model.config.audio_patch_token_id).sum()) == 5 * processor.num_audio_tokens(16000)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "feature_attention_mask")}
    cache = EncoderCache(tmp_path / "cache")
    with torch.no_grad():
        states = cache.encode(model, batch["audio_keys"], batch["input_features"], batch["feature_attention_mask"])
        cached = model(**inputs, audio_encoder_outputs=states).loss
        live = model(**inputs, input_features=batch["input_features"]).loss
    assert abs(cached.item() - live.item()) < 1e-3  # fp16-rounded states vs fp32


def test_nan_loss_stops_with_step_and_ids(tmp_path, data):
    from llasm.training import NonFiniteLoss, Trainer, load_config

    trainer = Trainer(load_config(config(tmp_path, data)))
    with torch.no_grad():
        trainer.model.adaptor.proj[1].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss, match=r"at step 1 on 1 of 1 rank\(s\); rank 0: loss nan, batch item ids: \['"):
        trainer.fit()


def test_final_checkpoint_loads_and_chats(tmp_path, data):
    from llasm import LlasmForConditionalGeneration

    _, _, result = run_trainer(config(tmp_path, data, **{"trainable.language_model": "lora",
                                                         "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}))
    model = LlasmForConditionalGeneration.from_pretrained(result["final"])
    reply = model.chat(audio=tone(1.0), text="Transcribe the audio.", max_new_tokens=5)
    assert isinstance(reply, str)


def _lora_run(tmp_path, data, tiny_bases, name, model=None, **over):
    """A LoRA run on the tiny model with base ids (so its checkpoints hold the adapter, not merged weights)."""
    import yaml

    spec = tmp_path / "model.yaml"
    spec.write_text(yaml.safe_dump(tiny_bases))
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    return config(tmp_path / name, data, **{"model": str(model or spec), "trainable.language_model": "lora", "lora": lora,
                                            "encoder_cache.enabled": False, "data.samples_per_epoch": 4,
                                            "train.lr": 1e-2, **over})


def test_lora_checkpoint_as_model_continues_its_adapter(tmp_path, data, tiny_bases):
    from safetensors.torch import load_file

    from llasm import LlasmForConditionalGeneration
    from llasm.data.dataset import Collator
    from llasm.training import Trainer, load_config

    _, _, first = run_trainer(_lora_run(tmp_path, data, tiny_bases, "a"))
    trainer = Trainer(load_config(_lora_run(tmp_path, data, tiny_bases, "b", model=first["final"],
                                            **{"train.save_every": 1, "train.max_steps": 2})))
    assert sum("lora_" in n for n in trainer.model.state_dict()) == sum("lora_" in n for n in load_file(
        f"{first['final']}/model.safetensors"))  # the loaded adapter, not a second one around it
    batch = Collator(trainer.processor, trainer.dataset)([trainer.dataset[i] for i in trainer.sampler.epoch_batches(0)[0]])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "input_features", "feature_attention_mask")
              if k in batch}
    loaded = LlasmForConditionalGeneration.from_pretrained(first["final"])
    with torch.no_grad():
        expected = loaded(**inputs).loss.item()
        loaded.language_model.disable_adapter_layers()
        base = loaded(**inputs).loss.item()
    assert abs(base - expected) > 1e-3  # the first run's adapter matters, so the check below means something
    result = trainer.fit()
    assert result["losses"][0][1] == pytest.approx(expected, abs=1e-5)  # step 1 starts from the loaded adapter
    # every checkpoint the run wrote loads: final/ with from_pretrained, checkpoint-2 (the last step's) by resuming
    final = LlasmForConditionalGeneration.from_pretrained(result["final"])
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(final(**inputs).logits, trainer.model(**inputs).logits, atol=1e-5)
    resumed = run_trainer(_lora_run(tmp_path, data, tiny_bases, "b", model=first["final"],
                                    **{"train.save_every": 100, "train.max_steps": 3}))[2]
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["steps"] == 3
    assert len(resumed["losses"]) == 3  # steps 1-2 kept from the first run, step 3 trained, nothing repeated


def test_lora_checkpoint_frozen_or_fully_trained(tmp_path, tiny_bases):
    from llasm import LlasmForConditionalGeneration, build_model
    from llasm.lora import add_lora, has_lora
    from llasm.training.parts import apply_trainability

    model, processor = build_model(tiny_bases)
    add_lora(model, {"r": 4, "alpha": 8, "dropout": 0.0})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    model.save_pretrained(tmp_path / "lora")
    batch = processor.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    for mode in ("frozen", "full"):
        loaded = LlasmForConditionalGeneration.from_pretrained(tmp_path / "lora")
        with torch.no_grad():
            before = loaded(**batch).logits
        apply_trainability(loaded, {"language_model": mode})
        trains = {n for n, p in loaded.language_model.named_parameters() if p.requires_grad}
        if mode == "frozen":
            assert has_lora(loaded) and not trains
        else:  # merged first: plain weights train, no adapter left to save twice
            assert not has_lora(loaded) and loaded.config.lora is None and trains
        with torch.no_grad():
            assert torch.allclose(loaded(**batch).logits, before, atol=1e-5)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(loaded if has_lora(loaded) else LlasmForConditionalGeneration.from_pretrained(tmp_path / "lora"))


# -- objectives ---------------------------------------------------------------------------------
def test_self_reply_and_kl_objectives(tmp_path, data, tiny):
    from llasm.io import read_jsonl
    from llasm.training.losses import kl_loss
    from llasm.training.objectives import precompute_self_replies

    model, processor = tiny
    rows = read_jsonl(data)
    for row in rows:
        row["audios"] = [str(data.parent / a) for a in row["audios"]]
    replies = precompute_self_replies(rows[:2], model, processor, max_new_tokens=4)
    assert [r["transcript"] for r in replies] == ["hello number 0", "hello number 1"]
    assert replies[0]["conversations"][0]["value"] == "<speech>"

    logits = torch.randn(1, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 2]])
    assert kl_loss(logits, labels, logits, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_loss(logits, labels, torch.randn(1, 5, 7), labels).item() > 0

    _, _, result = run_trainer(config(tmp_path / "sr", data, **{"objective.type": "self_reply",
                                                                "objective.max_new_tokens": 4}))
    assert result["steps"] == 2
    assert list((tmp_path / "sr" / "out").glob("self_replies-*.jsonl"))
    _, _, result = run_trainer(config(tmp_path / "kl", data, **{"objective.type": "kl"}))
    assert result["steps"] == 2 and all(np.isfinite(l) for _, l in result["losses"])


# -- processes ----------------------------------------------------------------------------------
def write_config(tmp_path, cfg) -> Path:
    import yaml

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def losses_of(out: Path) -> dict[int, float]:
    losses = {}
    for line in (out / "losses.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert rec["step"] not in losses, f"step {rec['step']} logged twice"  # a resume cuts the log back first
        losses[rec["step"]] = rec["loss"]
    return losses


@pytest.mark.slow
def test_sigkill_and_resume_gives_same_losses(tmp_path, data):
    over = {"train.max_steps": 8, "train.save_every": 2, "train.scheduler": "cosine", "train.keep_checkpoints": 10,
            "data.samples_per_epoch": 6, "trainable.language_model": "lora",
            "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}  # dropout: the RNG state must be restored too
    straight = config(tmp_path / "a", data, **over)
    subprocess.run([sys.executable, str(TRAIN), str(write_config(tmp_path / "a", straight))], env=env(), check=True,
                   capture_output=True)
    killed = config(tmp_path / "b", data, **over)
    path = write_config(tmp_path / "b", killed)
    out = Path(killed["output_dir"])
    proc = subprocess.Popen([sys.executable, str(TRAIN), str(path)], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint-4").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists(), "the run finished before it could be killed"
    subprocess.run([sys.executable, str(TRAIN), str(path)], env=env(), check=True, capture_output=True)
    a, b = losses_of(Path(straight["output_dir"])), losses_of(out)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in range(5, 9):
        assert abs(a[step] - b[step]) < 1e-4, (step, a[step], b[step])


def _ranks_identical(out: Path, n: int = 2):
    from safetensors.torch import load_file

    states = [load_file(str(out / f"rank{r}.safetensors")) for r in range(n)]
    assert states[0].keys() == states[1].keys() and states[0]
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


@pytest.mark.slow
def test_ddp_two_processes(tmp_path, data):
    cfg = config(tmp_path, data, **{"train.max_steps": 2, "encoder_cache.enabled": False})
    path = write_config(tmp_path, cfg)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
                    str(ROOT / "tests" / "dist_train.py"), str(path)], env=env(), check=True, timeout=120)
    _ranks_identical(Path(cfg["output_dir"]))


@pytest.mark.slow
def test_ddp_two_processes_fit_their_steps_to_the_minutes_together(tmp_path, data):
    """Two gloo ranks, each timing its own steps, take one fitted count at the same steps (a hang would fail in
    30 s) and stop together with identical weights."""
    cfg = config(tmp_path, data, **{"train.max_steps": 1000, "train.max_minutes": 0.15, "train.fit_steps_to_minutes": True,
                                    "train.scheduler": "cosine", "encoder_cache.enabled": False})
    path = write_config(tmp_path, cfg)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"timeout_s": 30}))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537",
                          str(ROOT / "tests" / "dist_train.py"), str(path)], env={**env(), "LLASM_TEST_PLAN": str(plan)},
                         check=True, timeout=180, capture_output=True, text=True)
    out = Path(cfg["output_dir"])
    steps = [json.loads((out / f"rank{r}.json").read_text())["step"] for r in range(2)]
    fitted = [int(line.split(" min fit ")[1].split()[0]) for line in run.stdout.splitlines() if " min fit " in line]
    assert steps[0] == steps[1] and fitted and steps[0] <= fitted[-1] < 1000
    _ranks_identical(out)


def _deepspeed_run(tmp_path, data, stage: int, port: int, model: str = str(TINY_YAML)) -> Path:
    cfg = config(tmp_path, data, **{"train.max_steps": 2, "output_dir": str(tmp_path / f"zero{stage}"), "model": model,
                                    "deepspeed": str(ROOT / f"configs/deepspeed/zero{stage}.json")})
    path = write_config(tmp_path, cfg)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                    str(ROOT / "tests" / "dist_train.py"), str(path)], env=env(), check=True, timeout=300)
    out = Path(cfg["output_dir"])
    _ranks_identical(out)
    return out


@pytest.mark.slow
def test_deepspeed_zero2_and_zero3_two_processes(tmp_path, data):
    """Both ZeRO configs train on 2 processes with identical ranks; from the same start (a saved
    model: ZeRO-3 builds models partitioned, so a random init would differ) ZeRO-3 ends where ZeRO-2
    does, and its final checkpoint, gathered on save, loads with from_pretrained."""
    pytest.importorskip("deepspeed")
    from safetensors.torch import load_file

    from llasm.modeling import LlasmForConditionalGeneration

    start = tmp_path / "start"
    build_tiny()[0].save_pretrained(start, merge=True)
    zero2 = load_file(str(_deepspeed_run(tmp_path, data, 2, 29532, str(start)) / "rank0.safetensors"))
    out = _deepspeed_run(tmp_path, data, 3, 29533, str(start))
    zero3 = load_file(str(out / "rank0.safetensors"))
    assert zero2.keys() == zero3.keys() and any(k.startswith("adaptor.") for k in zero3)
    losses = [json.loads(line)["loss"] for line in (out / "losses.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))
    loaded = dict(LlasmForConditionalGeneration.from_pretrained(out / "final").named_parameters())
    for name, value in zero3.items():
        torch.testing.assert_close(value, zero2[name], rtol=1e-4, atol=1e-5, msg=name)
        assert torch.equal(loaded[name], value), name


@pytest.mark.parametrize("barrier", [True, False])
def test_end_distributed_destroys_the_process_group(tmp_path, barrier):
    from llasm.training import end_distributed

    end_distributed(barrier)  # no group: nothing to do
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert torch.distributed.is_initialized()
    end_distributed(barrier)
    assert not torch.distributed.is_initialized()


def test_fast_loss_equals_plain_loss(tmp_path, data):
    """LM head on answer positions only + the frozen LLM's shared prefix from a KV cache: same loss."""
    from llasm.training import Trainer, load_config

    trainer = Trainer(load_config(config(tmp_path, data, **{"encoder_cache.enabled": False})))
    from llasm.data.dataset import Collator
    from llasm.training.losses import drop_unused_tail

    batch = Collator(trainer.processor, trainer.dataset)([trainer.dataset[i] for i in range(4)])
    with torch.no_grad():
        fast = trainer.loss(batch)
        assert trainer.prefix.key is not None and len(trainer.prefix.key) >= 8  # the prefix path ran
        trainer.cfg.train.fast_loss = False
        plain = trainer.loss(batch)
    assert abs(float(fast) - float(plain)) < 1e-5
    # the tail after the last predicting position is cut (here: at least the final end token of the longest row)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    length = inputs["input_ids"].shape[1]
    targets = batch["labels"][:, 1:]
    keep = int((targets != -100).any(0).nonzero().max()) + 1
    drop_unused_tail(inputs, keep, trainer.model.config)
    assert keep < length and inputs["input_ids"].shape[1] == inputs["attention_mask"].shape[1] == keep


@pytest.mark.parametrize("state,fused", [("input", False), ("output", False), ("output", True)])
def test_stage3_trains_only_the_unit_head(tmp_path, data, state, fused):
    """Stage 3: rows whose answers carry units; everything but the unit head stays bit-identical
    (with ``text_embeddings`` too: the LLM's embedding table is read, not trained)."""
    cfg = _units_config(tmp_path, data, "run")
    cfg["unit_head"].update(state=state, text_embeddings=fused)
    trainer, before, result = run_trainer(cfg)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all(n.startswith("unit_head.") for n in changed)
    losses = [x for _, x in result["losses"]]
    assert all(map(np.isfinite, losses)) and np.mean(losses[-3:]) < np.mean(losses[:3])
    import llasm

    loaded = llasm.LlasmForConditionalGeneration.from_pretrained(result["final"])
    assert loaded.unit_head is not None and loaded.config.unit_head["num_units"] == 12


def _units_config(tmp_path, data, name, **over):
    from llasm.io import read_jsonl, write_jsonl

    rows = read_jsonl(data)
    for i, row in enumerate(rows):
        row["conversations"][-1]["units"] = [(3 * i + j) % 12 for j in range(4 + i % 3)]
    with_units = write_jsonl(data.parent / "units.jsonl", rows)
    return config(tmp_path / name, with_units, **{
        "trainable": {"audio_tower": "frozen", "adaptor": "frozen", "language_model": "frozen", "unit_head": "full"},
        "unit_head": {"num_units": 12, "upsample_factor": 4, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                      "intermediate_size": 64, "state": "output"},
        "objective": {"type": "units"}, "train.max_steps": 12, "train.lr": 3e-3, **over})


def test_stage3_cached_answer_states_match_and_skip_the_llm(tmp_path, data):
    """objective.cache_states: the same losses, with the frozen LLM run only until every
    conversation's answer states are kept."""
    from llasm.training import Trainer, load_config

    losses, calls = {}, {}
    for cached in (False, True):
        trainer = Trainer(load_config(_units_config(tmp_path, data, str(cached), **{"objective.cache_states": cached})))
        count = []
        trainer.model.language_model.register_forward_hook(lambda *a: count.append(1))
        losses[cached] = [x for _, x in trainer.fit()["losses"]]
        calls[cached] = len(count)
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    assert calls[False] == 12 and 0 < calls[True] < 12
    assert len(trainer.state_cache) == len(trainer.dataset)


def test_stage3_cached_states_need_frozen_parts(tmp_path, data):
    from llasm.training import Trainer, load_config

    cfg = _units_config(tmp_path, data, "x", **{"objective.cache_states": True})
    cfg["trainable"]["adaptor"] = "full"
    with pytest.raises(ValueError, match="cache_states needs objective.type units with audio_tower, adaptor"):
        Trainer(load_config(cfg))
    cfg["trainable"]["adaptor"] = "frozen"
    cfg["deepspeed"] = "configs/deepspeed/zero3.json"
    with pytest.raises(ValueError, match="not with ZeRO-3, whose parameters are partitioned"):
        Trainer(load_config(cfg))


def test_a_second_precision_in_one_process_starts_a_fresh_accelerator_state():
    """accelerate refuses a second mixed precision in one process; one process without a launcher may
    start afresh (train() in bf16 after an fp32 run), a launched rank keeps accelerate's error."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from llasm.training.distributed import release_precision

    Accelerator(cpu=True, mixed_precision="no")
    with pytest.raises(ValueError, match="already been initialized"):
        Accelerator(cpu=True, mixed_precision=release_precision("bf16", world_size=2))
    assert Accelerator(cpu=True, mixed_precision=release_precision("bf16", world_size=1)).mixed_precision == "bf16"
    assert release_precision("bf16", world_size=1) == "bf16" and AcceleratorState().mixed_precision == "bf16"
    AcceleratorState._reset_state(reset_partial_state=True)


def test_stage3_phoneme_head_trains_without_running_the_llm(tmp_path, data):
    """``unit_head.input: phonemes``: the head learns from the answers' text; the LLM never runs and
    nothing but the head changes; the checkpoint keeps the phoneme inventory."""
    cfg = _units_config(tmp_path, data, "phonemes")
    cfg["unit_head"].update(input="phonemes")
    from llasm.training import Trainer, load_config

    trainer = Trainer(load_config(cfg))
    calls = []
    trainer.model.language_model.register_forward_hook(lambda *a: calls.append(1))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.fit()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert calls == [] and changed and all(n.startswith("unit_head.") for n in changed)
    assert any(n.startswith("unit_head.phoneme_encoder.") for n in changed)
    losses = [x for _, x in result["losses"]]
    assert all(map(np.isfinite, losses)) and np.mean(losses[-3:]) < np.mean(losses[:3])
    import llasm

    loaded = llasm.LlasmForConditionalGeneration.from_pretrained(result["final"])
    assert loaded.config.unit_head["input"] == "phonemes" and loaded.config.unit_head["phonemes"][0] == "<pad>"


def test_stage3_phoneme_head_rejects_rows_in_a_language_it_cannot_phonemize(tmp_path, data):
    """A row in another language is skipped and written to the rejects, naming it; the run goes on."""
    from llasm.io import read_jsonl, write_jsonl
    from llasm.training import Trainer, load_config

    cfg = _units_config(tmp_path, data, "fr", **{"train.max_steps": 3})
    cfg["unit_head"].update(input="phonemes")
    rows = read_jsonl(cfg["data"]["sources"][0]["path"])
    rows[0]["lang"] = "fr"
    cfg["data"]["sources"][0]["path"] = str(write_jsonl(data.parent / "fr.jsonl", rows))  # beside its wavs
    trainer = Trainer(load_config(cfg))
    assert "rejected" in trainer.dataset[0] and trainer.fit()["losses"]
    rejects = read_jsonl(tmp_path / "fr" / "out" / "rejects.jsonl")
    assert rejects[0]["id"] == rows[0]["id"] and "lang 'fr'" in rejects[0]["reason"]


def test_fit_steps_to_minutes_ends_the_schedule_inside_the_budget(tmp_path, data, monkeypatch, capsys):
    """train.fit_steps_to_minutes: the run times its first steps (a fake clock: 1 s a step while it measures)
    and ends, with its cosine at 0, at the steps that fit in max_minutes instead of max_steps; a resume keeps
    that count and schedule."""
    import math
    import shutil

    from llasm.training import budget

    clock = [0.0]

    def tick():  # the budget reads the clock twice a step while it measures (then once): 1 s a step
        clock[0] += 0.5
        return clock[0]

    monkeypatch.setattr(budget.time, "monotonic", tick)
    over = {"train.max_steps": 100, "train.max_minutes": 0.5, "train.fit_steps_to_minutes": True,
            "train.scheduler": "cosine", "train.warmup_steps": 2, "train.save_every": 25}
    trainer, _, result = run_trainer(config(tmp_path, data, **over))
    # 1 s a step (step 1's end to step 21's: 20 s), 20.5 s gone at step 21: 0.97 x 30 s leaves 8 more steps
    assert trainer.fitted_steps == trainer.total_steps == result["steps"] == 29
    assert "0.5 min fit 29 steps at this run's pace (steps 2-21)" in capsys.readouterr().out
    out = tmp_path / "out"
    lrs = {json.loads(line)["step"]: json.loads(line)["lr"] for line in (out / "losses.jsonl").read_text().splitlines()}

    def cosine(step, total):  # transformers' cosine with 2 warmup steps: the lr step `step` uses
        k = step - 1
        return 1e-3 * (k / 2 if k < 2 else 0.5 * (1 + math.cos(math.pi * (k - 2) / (total - 2))))

    assert lrs[21] == pytest.approx(cosine(21, 100))  # the measured steps follow max_steps' schedule
    assert [lrs[s] for s in range(22, 30)] == pytest.approx([cosine(s, 29) for s in range(22, 30)])
    assert lrs[29] < 0.01 * 1e-3  # annealed inside the budget
    shutil.rmtree(out / "checkpoint-29")  # stopped after step 25: the resume keeps the fitted 29 steps
    (out / "final").rename(out / "final-first")
    trainer, _, result = run_trainer(config(tmp_path, data, **over))
    assert result["resumed_from"].endswith("checkpoint-25") and trainer.total_steps == result["steps"] == 29
    again = {json.loads(line)["step"]: json.loads(line)["lr"] for line in (out / "losses.jsonl").read_text().splitlines()}
    assert again == pytest.approx(lrs)


def test_fit_steps_to_minutes_needs_max_minutes(tmp_path, data):
    from llasm.training import load_config
    from llasm.training.describe import InputError, check_inputs

    with pytest.raises(InputError, match="train.fit_steps_to_minutes needs train.max_minutes"):
        check_inputs(load_config(config(tmp_path, data, **{"train.fit_steps_to_minutes": True})))


def test_fit_steps_to_minutes_fits_again_when_the_pace_changes(tmp_path, data, monkeypatch, capsys):
    """First steps slower than the rest (a fake clock: 2 s a step until step 21, then 1 s): the count fitted
    at step 21 is raised at the check half-way through it, the cosine follows the new count from there and
    still reaches 0 at the run's end; never past max_steps."""
    import math

    from llasm.training import budget

    clock = [0.0]

    def tick():  # two reads a step while the budget measures: 1 s a read until the 21st step ends, then 0.5 s
        clock[0] += 1.0 if clock[0] < 42 else 0.5
        return clock[0]

    monkeypatch.setattr(budget.time, "monotonic", tick)
    over = {"train.max_steps": 200, "train.max_minutes": 1.5, "train.fit_steps_to_minutes": True,
            "train.scheduler": "cosine", "train.warmup_steps": 2}
    trainer, _, result = run_trainer(config(tmp_path, data, **over))
    fits = [int(line.split(" min fit ")[1].split()[0]) for line in capsys.readouterr().out.splitlines()
            if " min fit " in line]
    assert len(fits) == 2 and fits[0] < fits[1] == result["steps"] == trainer.total_steps < 200
    lrs = {json.loads(line)["step"]: json.loads(line)["lr"] for line in (tmp_path / "out" / "losses.jsonl").read_text().splitlines()}
    last = max(lrs)
    assert lrs[last] < 0.01 * 1e-3
    k = last - 1  # the last step follows a cosine over the final count
    assert lrs[last] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (k - 2) / (last - 2))))
