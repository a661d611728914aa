"""A training run checks its inputs before any model loads, describes itself, refuses to continue a
run made with another config, and leaves checkpoints that load like final/ (llasm.training.describe,
llasm.training.resume)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import soundfile as sf
import yaml
from conftest import ROOT, tone
from test_training import config, make_data


@pytest.fixture()
def data(tmp_path):
    return make_data(tmp_path / "data", n=4)


def _no_model(monkeypatch):
    """Fail loudly if the trainer gets as far as loading a model."""
    import llasm.training.trainer as trainer_module

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(trainer_module, "load_model", refuse)


def test_no_usable_row_stops_before_the_model_loads(tmp_path, data, monkeypatch):
    """Audio paths relative to the wrong folder: every row is rejected; the run stops at once, naming
    the rejects file and the first reasons (it used to loop at 0/1 forever)."""
    from llasm.training import Trainer, load_config
    from llasm.training.describe import InputError

    moved = tmp_path / "elsewhere" / "train.jsonl"
    moved.parent.mkdir()
    rows = [line for line in data.read_text().splitlines() if '"audios": []' not in line]
    moved.write_text("\n".join(rows) + "\n")  # the spoken rows, without their wavs/ folder
    _no_model(monkeypatch)
    cfg = load_config(config(tmp_path, moved))
    with pytest.raises(InputError) as err:
        Trainer(cfg)
    message = str(err.value)
    rejects = tmp_path / "out" / "rejects.jsonl"
    assert "no usable row" in message and str(rejects) in message
    assert "asr-0: " in message and "wavs/0.wav: file not found" in message
    assert str(moved.parent) in message  # where the paths were looked for
    assert len(rejects.read_text().splitlines()) == 5  # the 4 ASR rows and the 2-audio row


def test_an_input_error_every_rank_meets_is_said_once_per_node(tmp_path, monkeypatch, capsys):
    """`llasm train` under torchrun: every rank checks the same config and data, so the up-front check's
    error is printed by each node's LOCAL_RANK 0 only (a SLURM log per node keeps it); a rank's own
    error (a non-finite loss names its rank, loss and batch) is printed on every rank."""
    from llasm.training.describe import InputError
    from llasm.training.trainer import NonFiniteLoss, main

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, tmp_path / "missing.jsonl")))
    for local_rank, said in (("1", False), ("0", True)):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        assert main([str(path)]) == 1
        assert ("stopped: cannot train" in capsys.readouterr().err) is said
        assert main([str(path), "train.lrr=1"]) == 2  # a config mistake: every rank reads the same files too
        assert ("error: the overrides (train.lrr=1)" in capsys.readouterr().err) is said
    assert not InputError("rank-local").every_rank  # e.g. a rank whose shard rejected a whole epoch
    import llasm.training.trainer as trainer_module

    def diverge(cfg):
        raise NonFiniteLoss("non-finite loss at step 3 on 1 of 2 rank(s); rank 1: loss nan")

    monkeypatch.setattr(trainer_module, "train", diverge)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main([str(path)]) == 1
    assert "stopped: non-finite loss at step 3 on 1 of 2 rank(s); rank 1: loss nan" in capsys.readouterr().err


def test_all_rows_failing_at_load_time_stop_instead_of_looping(tmp_path):
    """Rows that pass the cheap checks but whose audio cannot be decoded: the first epoch that yields
    no batch stops the run with the same message."""
    from llasm.training import train
    from llasm.training.describe import InputError

    (tmp_path / "wavs").mkdir()
    rows = []
    for i in range(3):
        (tmp_path / "wavs" / f"{i}.wav").write_bytes(b"RIFF not really audio")
        rows.append({"id": f"bad-{i}", "audios": [f"wavs/{i}.wav"],
                     "conversations": [{"from": "human", "value": "<speech>"}, {"from": "gpt", "value": "x"}]})
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match=r"no usable row.*rejects\.jsonl.*\n.*bad-"):
        train(config(tmp_path, data, **{"train.max_steps": 5}))


def test_inputs_are_all_checked_first(tmp_path, monkeypatch):
    from llasm.training import Trainer, load_config
    from llasm.training.describe import InputError

    _no_model(monkeypatch)
    cfg = config(tmp_path, tmp_path / "nope.jsonl", model=str(tmp_path / "runs" / "s1"), deepspeed="nope.json",
                 **{"objective.type": "ctc"})
    (tmp_path / "runs" / "s1" / "final").mkdir(parents=True)
    (tmp_path / "runs" / "s1" / "final" / "config.json").write_text("{}")
    with pytest.raises(InputError) as err:
        Trainer(load_config(cfg))
    message = str(err.value)
    assert f"(the run's checkpoint is {tmp_path / 'runs' / 's1' / 'final'})" in message
    assert "deepspeed: nope.json not found" in message and "objective.type must be one of" in message
    assert f"data.sources[0].path: {tmp_path / 'nope.jsonl'} not found" in message
    # plain dicts in the YAML (trainable, a data source): their keys too, with the nearest known one
    cfg = config(tmp_path, tmp_path / "nope.jsonl", **{"trainable.adapter": "full"})
    cfg["data"]["sources"].append({"pth": str(tmp_path / "other.jsonl"), "weight": 1.0})
    with pytest.raises(InputError) as err:
        Trainer(load_config(cfg))
    message = str(err.value)
    assert "trainable.adapter: not a part of the model; did you mean 'trainable.adaptor'?" in message
    assert "data.sources[1]: unknown key 'pth'; did you mean 'path'?" in message and "data.sources[1] has no path" in message
    # the model YAML's own keys, before it loads (it raised a traceback after the run had described itself)
    from conftest import TINY_YAML

    model = tmp_path / "model.yaml"
    model.write_text(TINY_YAML.read_text() + "audio_tokns: 3\n")
    with pytest.raises(InputError, match=rf"model: {model}: unknown config key 'audio_tokns'; did you mean"):
        Trainer(load_config(config(tmp_path, tmp_path / "nope.jsonl", model=str(model))))


def test_text_only_alpaca_and_sharegpt_files_are_sources(tmp_path, tiny):
    """An Alpaca JSON list and a ShareGPT JSON are read as text conversations, not 'invalid JSON'."""
    from llasm.data.dataset import ConversationDataset, Source

    _, processor = tiny
    (tmp_path / "alpaca.json").write_text(json.dumps(
        [{"instruction": "Name a colour.", "input": "", "output": "Blue."},
         {"instruction": "Translate.", "input": "你好", "output": "Hello."}], ensure_ascii=False))
    (tmp_path / "sharegpt.json").write_text(json.dumps(
        [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                            {"from": "gpt", "value": "Hello!"}]},
         {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
         {"text": "a bare sentence"}]))
    ds = ConversationDataset([Source(str(tmp_path / "alpaca.json")), Source(str(tmp_path / "sharegpt.json"))],
                             processor, rejects_path=str(tmp_path / "rejects.jsonl"))
    assert len(ds) == 4 and [ds.rows[i][0]["id"] for i in range(4)] == ["alpaca-0", "alpaca-1", "sharegpt-0", "sharegpt-1"]
    assert ds.rows[1][0]["conversations"][0]["value"] == "Translate.\n\n你好"
    assert ds.rows[2][0]["system"] == "Be brief."
    item = ds[3]
    assert "rejected" not in item and item["audio_chunks"] == []
    [reject] = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert reject["id"] == "sharegpt-2" and "llasm synthesize" in reject["reason"]


def test_a_run_describes_itself(tmp_path, data, capsys):
    from llasm.training import train

    result = train(config(tmp_path, data, **{"train.warmup_steps": 10, "train.batch_size": 16,
                                             "train.scheduler": "linear", "train.max_steps": 3}))
    out = capsys.readouterr().out
    assert "[train] config (" in out and "    output_dir: " in out  # the resolved config
    assert "    train: 6 of 6 rows usable, weight 1 (100 % of draws)" in out
    assert "    adaptor: " in out and "    language_model: 0 of " in out and "(frozen)" in out
    assert "[train] 3 steps: 1 batches of 16 per epoch" in out
    assert "warning: train.warmup_steps 10 >= the run's 3 steps" in out
    assert "warning: train.batch_size 16 x 1 process(es) > the 6 usable rows" in out
    assert ("warning: train.save_every 100: no checkpoint between step 0 and the run's end at step 3, so a stopped "
            "run starts again from step 0\n") in out
    assert "[train] done: 3 steps" in out and "final loss " in out and f"model:   {result['final']}" in out
    saved = yaml.safe_load((tmp_path / "out" / "train_config.yaml").read_text())
    assert saved["train"]["warmup_steps"] == 10 and saved == yaml.safe_load(
        (tmp_path / "out" / "final" / "train_config.yaml").read_text())


def test_lr_zero_is_a_warning():
    from llasm.training.config import load_config
    from llasm.training.describe import warnings_for

    cfg = load_config({"train": {"lr": 0.0, "part_lr": {"adaptor": 0}}})
    found = warnings_for(cfg, 10, 100, 1, [1.0] * 5 + [0.0] * 5)
    assert "train.lr is 0.0: nothing trains" in found and "train.part_lr.adaptor is 0: adaptor does not train" in found
    cfg = load_config({"train": {"lr": 1e-3, "warmup_steps": 2, "save_every": 5}})
    assert warnings_for(cfg, 10, 100, 1, [0.0, 0.5] + [1.0] * 8) == []  # warmup's first step at 0 is normal
    assert any("learning rate is 0 at 3 of 10 steps (from step 8" in w
               for w in warnings_for(cfg, 10, 100, 1, [0.0, 0.5] + [1.0] * 5 + [0.0] * 3))


def test_save_every_warning_counts_from_the_resumed_step():
    from llasm.training.config import load_config
    from llasm.training.describe import warnings_for

    cfg = load_config({"train": {"save_every": 5}})
    assert warnings_for(cfg, 12, 100, 1, [1.0] * 12, start=5) == []  # step 10 still saves
    found = warnings_for(cfg, 12, 100, 1, [1.0] * 12, start=10)
    assert found == ["train.save_every 5: no checkpoint between step 10 and the run's end at step 12, so a stopped "
                     "run starts again from step 10 (the checkpoint it resumed from)"]
    assert warnings_for(cfg, 12, 100, 1, [1.0] * 12, start=12) == []  # finished: nothing left to lose


def test_changed_config_refuses_to_resume(tmp_path, data, capsys):
    """A finished run's checkpoint-2 and final/: rerunning with another lr or changed data stops and
    says what changed; resume: force continues; a new output_dir starts afresh. Every checkpoint holds
    the config, and a checkpoint-N loads and chats like final/."""
    from llasm import LlasmForConditionalGeneration
    from llasm.training import load_config, train
    from llasm.training.describe import InputError

    over = {"train.max_steps": 3, "train.save_every": 2}
    first = train(config(tmp_path, data, **over))
    out = tmp_path / "out"
    assert yaml.safe_load((out / "checkpoint-2" / "train_config.yaml").read_text())["train"]["save_every"] == 2
    assert load_config(out / "checkpoint-2" / "train_config.yaml").train.max_steps == 3  # loads back as it is

    with pytest.raises(InputError, match=r"train\.lr: 0\.001 -> 0\.05(.|\n)*resume: force"):
        train(config(tmp_path, data, **over, **{"train.lr": 5e-2}))
    again = train(config(tmp_path, data, **over))  # the same run again: it had finished, nothing is redone
    assert again["resumed_from"].endswith("checkpoint-3") and again["steps"] == 3 and len(again["losses"]) == 3
    assert "the run had finished, nothing to train" in capsys.readouterr().out
    longer = train(config(tmp_path, data, **{**over, "train.max_steps": 4}))  # a longer run is no change
    assert longer["resumed_from"].endswith("checkpoint-3") and longer["steps"] == 4  # from its last step
    assert re.search(r"the run's length changed \(train\.max_steps: 3 -> 4\): .* from here \(step 4: lr [0-9.e-]+\)",
                     capsys.readouterr().out)  # the lr the schedule gives the next step
    with open(data, "a") as f:
        f.write(json.dumps({"id": "new", "conversations": [{"from": "human", "value": "hi"},
                                                           {"from": "gpt", "value": "ho"}]}) + "\n")
    with pytest.raises(InputError, match=rf"data {data}: its content changed"):
        train(config(tmp_path, data, **over))
    forced = train(config(tmp_path, data, **over, resume="force"))
    assert forced["resumed_from"].endswith("checkpoint-4")  # the newest checkpoint, whatever the config says
    fresh = train(config(tmp_path, data, **over, **{"train.lr": 5e-2, "output_dir": str(tmp_path / "new")}))
    assert fresh["resumed_from"] is None and first["steps"] == 3

    model = LlasmForConditionalGeneration.from_pretrained(out / "checkpoint-3")  # kept: the newest two (3, 4)
    assert isinstance(model.chat(audio=tone(1.0), text="Transcribe.", max_new_tokens=3), str)


def test_resume_keeps_each_step_once_in_the_loss_log(tmp_path, data):
    """A run killed after checkpoint-2 (its later checkpoint and final/ gone) continues from checkpoint-2:
    losses.jsonl holds steps 1..4 once each, the first two from the first sitting."""
    from llasm.training import train

    cfg = config(tmp_path, data, **{"train.max_steps": 4, "train.save_every": 2, "train.scheduler": "linear",
                                    "train.warmup_steps": 0})
    train(cfg)
    log = tmp_path / "out" / "losses.jsonl"
    before = log.read_text().splitlines()
    shutil.rmtree(tmp_path / "out" / "final")
    shutil.rmtree(tmp_path / "out" / "checkpoint-4")
    again = train(cfg)
    after = log.read_text().splitlines()
    assert again["resumed_from"].endswith("checkpoint-2")
    assert [json.loads(line)["step"] for line in after] == [1, 2, 3, 4] and after[:2] == before[:2]
    # each step logs the lr it trained with: linear decay from 1e-3 over 4 steps
    assert [json.loads(line)["lr"] for line in after] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])


def test_broken_rows_still_train_the_rest(tmp_path, data, capsys):
    """A few unusable rows: counted per source at the start, the rest trains."""
    from llasm.training import train

    sf.write(data.parent / "wavs" / "x.wav", tone(0.5), 16000)
    with open(data, "a") as f:
        f.write(json.dumps({"id": "gone", "audios": ["wavs/missing.wav"],
                            "conversations": [{"from": "human", "value": "<speech>"}, {"from": "gpt", "value": "x"}]}) + "\n")
    result = train(config(tmp_path, data))
    out = capsys.readouterr().out
    assert result["steps"] == 2 and "6 of 7 rows usable (1 rejected, see" in out


def test_a_read_only_encoder_cache_must_exist_and_its_use_is_reported(tmp_path, data, capsys):
    """A mistyped read-only cache path stops before the model loads (it would mean a live Whisper pass
    every epoch); a run with the cache says how many audio chunks it read and how many it encoded."""
    from llasm.training import train
    from llasm.training.describe import InputError

    with pytest.raises(InputError, match=r"encoder_cache.read_only needs the cache built beforehand"):
        train(config(tmp_path, data, **{"encoder_cache.enabled": True, "encoder_cache.read_only": True,
                                          "encoder_cache.dir": str(tmp_path / "no-such-cache")}))
    result = train(config(tmp_path, data, **{"encoder_cache.enabled": True, "encoder_cache.dir": str(tmp_path / "c"),
                                               "train.max_steps": 2}))
    cache = json.loads((tmp_path / "out" / "train_summary.json").read_text())["encoder_cache"]
    assert cache["dir"] == str(tmp_path / "c") and cache["hits"] + cache["misses"] > 0 and result["steps"] == 2
    assert "audio chunks read" in capsys.readouterr().out
    from llasm.io import umask

    shards = list((tmp_path / "c").glob("shard-*.safetensors"))  # others read a shared cache: umask, not 0600
    assert shards and all(f.stat().st_mode & 0o777 == 0o666 & ~umask() for f in shards)


def test_unit_head_settings_are_checked_before_the_model_loads(tmp_path, data, monkeypatch):
    from llasm.training import Trainer, load_config
    from llasm.training.describe import InputError

    _no_model(monkeypatch)
    cfg = config(tmp_path, data)
    cfg["unit_head"] = {"num_units": 8, "input": "phonemse"}
    with pytest.raises(InputError, match="unit_head.input must be 'states' or 'phonemes', got 'phonemse'"):
        Trainer(load_config(cfg))


def test_ctrl_c_says_where_a_rerun_goes_on(tmp_path, monkeypatch, capsys):
    """Ctrl-C during `llasm train`: exit 130 and one line naming the checkpoint the same command resumes from."""
    import llasm.training.trainer as trainer_module
    from llasm.training.cli import main

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "main", interrupted)
    config_path = ROOT / "configs" / "stage3_unit_head.yaml"
    assert main([str(config_path), f"output_dir={tmp_path / 'run'}"]) == 130
    assert "starts again from step 0" in capsys.readouterr().err
    (tmp_path / "run" / "checkpoint-7").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint-7" / "trainer_state.pt").write_bytes(b"")
    assert main([str(config_path), f"output_dir={tmp_path / 'run'}"]) == 130
    assert f"stopped: the same command resumes from {tmp_path / 'run' / 'checkpoint-7'}" in capsys.readouterr().err
