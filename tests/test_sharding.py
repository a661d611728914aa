"""Data preparation across machines: --num-shards / --shard-index, the done markers and the merge's
coverage check, for prepare-asr, synthesize and (in test_units.py) units."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from conftest import ROOT, SR, tone

from llasm import sharding
from llasm.io import read_jsonl
from llasm.prep import asr
from llasm.sharding import Shard, ShardError


def test_shard_split_is_round_robin_and_validated(tmp_path):
    shards = [Shard(3, i) for i in range(3)]
    assert [[p for p in range(8) if s.owns(p)] for s in shards] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert Shard().path(tmp_path / "o.jsonl") == tmp_path / "o.jsonl" and not Shard().is_done(tmp_path / "o.jsonl")
    assert shards[1].path(tmp_path / "o.jsonl").name == "o.shard-00001-of-00003.jsonl"
    assert shards[1].done_path(tmp_path / "o.jsonl").name == "o.shard-00001-of-00003.done.json"
    with pytest.raises(ValueError, match="--shard-index must be in"):
        Shard(2, 2)
    with pytest.raises(ValueError, match="--num-shards must be >= 1"):
        Shard(0, 0)


def make_tsv_corpus(root):
    """Ten clips; in 3 shards: position 5 repeats clip 1's bytes (shards 2 and 1), 3 has an empty
    transcript, 7 is corrupt, and 8 has clip 0's id (``tsv-0``, shards 2 and 0)."""
    (root / "wavs" / "sub").mkdir(parents=True)
    for i in range(7):
        sf.write(root / "wavs" / f"{i}.wav", tone(0.4 + 0.1 * i, seed=i, freq=150 + 40 * i), SR)
    sf.write(root / "wavs" / "sub" / "0.wav", tone(0.5, seed=9, freq=700), SR)
    shutil.copy(root / "wavs" / "1.wav", root / "wavs" / "copy.wav")
    (root / "wavs" / "bad.wav").write_bytes(b"RIFF....not audio")
    files = ["0", "1", "2", "3", "4", "copy", "5", "bad", "sub/0", "6"]
    lines = [f"wavs/{f}.wav\t{'' if f == '3' else 'sentence ' + f.replace('/', ' ')}" for f in files]
    (root / "list.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "list.tsv"


def run_asr(tsv, output, *extra):
    return asr.main(["--format", "tsv", "--input", str(tsv), "--output", str(output), "--lang", "en", *extra])


def test_prepare_asr_in_three_shards_merges_to_the_single_run(tmp_path):
    tsv = make_tsv_corpus(tmp_path / "corpus")
    single = tmp_path / "single" / "asr.jsonl"
    assert run_asr(tsv, single) == 0
    out = tmp_path / "sharded" / "asr.jsonl"
    for index in (2, 0):
        assert run_asr(tsv, out, "--num-shards", "3", "--shard-index", str(index)) == 0
    with pytest.raises(ShardError, match=r"1 of 3 shards not finished \(indices \[1\]\)"):
        sharding.merge(out, 3)
    assert run_asr(tsv, out, "--num-shards", "3", "--shard-index", "1") == 0
    marker = Shard(3, 1).done_path(out)
    before = marker.stat().st_mtime_ns
    assert run_asr(tsv, out, "--num-shards", "3", "--shard-index", "1") == 0  # a rerun does nothing
    assert marker.stat().st_mtime_ns == before

    assert sharding.main(["--output", str(out), "--num-shards", "3"]) == 0
    # the same items, ids and order as one machine's run (audio paths: relative to sibling folders)
    items = read_jsonl(out)
    assert items == read_jsonl(single)
    assert [i["id"] for i in items] == ["tsv-0", "tsv-1", "tsv-2", "tsv-4", "tsv-5", "tsv-0-2", "tsv-6"]
    merged_rejects = read_jsonl(out.with_name("asr.rejects.jsonl"))
    single_rejects = read_jsonl(single.with_name("asr.rejects.jsonl"))
    assert [r["id"] for r in merged_rejects] == [r["id"] for r in single_rejects] == ["tsv-3", "tsv-copy", "tsv-bad"]
    # the copy (shard 2) is found at the merge, by the content hash shard 1 recorded for clip 1
    assert merged_rejects[1]["reason"] == "duplicate of item tsv-1 (another shard)"


def test_merge_refuses_shards_that_do_not_cover_the_input(tmp_path):
    tsv = make_tsv_corpus(tmp_path / "corpus")
    out = tmp_path / "o" / "asr.jsonl"
    for index in range(2):
        assert run_asr(tsv, out, "--num-shards", "2", "--shard-index", str(index)) == 0
    marker_path = Shard(2, 1).done_path(out)
    marker = json.loads(marker_path.read_text())
    good = dict(marker)

    marker["item_positions"] = marker["item_positions"][1:]  # shard 1 lost its first item (position 1)
    marker_path.write_text(json.dumps(marker))
    with pytest.raises(ShardError, match=r"1 input item\(s\) without a record \(positions \[1\]\)"):
        sharding.merge(out, 2)
    marker_path.write_text(json.dumps(good))
    items = read_jsonl(Shard(2, 1).path(out))
    Shard(2, 1).path(out).write_text("".join(json.dumps(r) + "\n" for r in items[1:]))
    with pytest.raises(ShardError, match="but its marker lists"):  # the shard's file and its marker disagree
        sharding.merge(out, 2)

    marker_path.write_text(json.dumps(good | {"input_count": 5, "input_digest": "x"}))
    with pytest.raises(ShardError, match="shard 1 saw another input"):
        sharding.merge(out, 2)
    marker_path.write_text(json.dumps(good | {"reject_positions": good["reject_positions"] + [0]}))
    with pytest.raises(ShardError, match="input position 0, which is not its own"):
        sharding.merge(out, 2)
    assert sharding.main(["--output", str(out), "--num-shards", "3"]) == 2  # wrong N: a clean error


needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


@needs_espeak
def test_synthesize_in_two_shards_share_the_audio_folder_and_merge(tmp_path):
    from llasm.prep import synthesize as synth

    rows = [{"instruction": f"Say the number {i}.", "input": "", "output": f"{i}"} for i in range(5)]
    rows.insert(2, {"instruction": "", "input": "", "output": "nothing"})  # rejected: empty text
    source = tmp_path / "alpaca.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"languages": {"en": ["espeak"], "zh": ["espeak"]}}
    single = synth.synthesize_dataset(source, tmp_path / "one" / "s.jsonl", config=config, progress=False,
                                      workers=1)
    out = tmp_path / "two" / "s.jsonl"
    counts = [synth.synthesize_dataset(source, out, config=config, progress=False, workers=1, shard=Shard(2, i))
              for i in range(2)]
    assert sum(c["items"] for c in counts) == single["items"] == 5
    assert sharding.merge(out, 2) == {"items": 5, "rejects": 1, "inputs": 6}
    merged, reference = read_jsonl(out), read_jsonl(tmp_path / "one" / "s.jsonl")
    assert merged == reference  # same ids, voices, file names, in input order
    for item in merged:
        assert all((out.parent / a).exists() for a in item["audios"])
    again = synth.synthesize_dataset(source, out, config=config, progress=False, workers=1, shard=Shard(2, 0))
    assert again["synthesized"] == 0  # resumed item by item from the shard's own progress file


def test_encoder_cache_built_in_shards_is_used_read_only(tmp_path):
    from test_training import config, make_data

    from llasm.training import Trainer, load_config
    from llasm.training.cache_cli import main as cache_main

    data = make_data(tmp_path / "data")
    cfg_path = tmp_path / "stage.json"  # YAML is a superset of JSON
    cfg_path.write_text(json.dumps(config(tmp_path, data)))
    for index in range(2):
        assert cache_main([str(cfg_path), "--num-shards", "2", "--shard-index", str(index), "--quiet"]) == 0
    built = tmp_path / "cache" / "built.jsonl"
    assert sharding.merge(built, 2) == {"items": 10, "rejects": 0, "inputs": 10}
    files = sorted((tmp_path / "cache").glob("shard-*.safetensors"))
    assert len(files) == 2  # one per process

    cfg = load_config(str(cfg_path), ["encoder_cache.read_only=true", "train.max_steps=2"])
    trainer = Trainer(cfg)
    trainer.fit()
    assert trainer.cache.misses == 0 and trainer.cache.hits > 0
    assert sorted((tmp_path / "cache").glob("shard-*.safetensors")) == files  # nothing written


@pytest.mark.slow
def test_slurm_array_script_runs_each_task_then_the_merge(tmp_path):
    """data_prep/slurm/prepare_array.sbatch as Slurm would run it: one process per array task."""
    tsv = make_tsv_corpus(tmp_path / "corpus")
    out = tmp_path / "out" / "asr.jsonl"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "SLURM_ARRAY_TASK_COUNT": "2"}
    for task in range(2):
        subprocess.run(["bash", str(ROOT / "data_prep" / "slurm" / "prepare_array.sbatch"), "prepare-asr", "--format",
                        "tsv", "--input", str(tsv), "--output", str(out), "--lang", "en"],
                       env=env | {"SLURM_ARRAY_TASK_ID": str(task)}, check=True, capture_output=True)
    subprocess.run(["llasm", "merge-shards", "--output", str(out), "--num-shards", "2"], env=env, check=True,
                   capture_output=True)
    assert len(read_jsonl(out)) == 7
    for script in ("train/slurm/multinode.sbatch", "data_prep/slurm/prepare_array.sbatch"):
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)  # srun is not here: syntax only


def test_a_finished_shard_of_a_changed_input_is_made_again(tmp_path, caplog):
    """A finished shard is skipped only while its job is the same: a clip added to the input (or another
    setting) makes every shard again on the rerun, so the merge holds the new clip instead of a stale
    'already done' output."""
    tsv = make_tsv_corpus(tmp_path / "corpus")
    out = tmp_path / "sharded" / "asr.jsonl"
    for index in range(2):
        assert run_asr(tsv, out, "--num-shards", "2", "--shard-index", str(index)) == 0
    assert sharding.main(["--output", str(out), "--num-shards", "2"]) == 0
    before = len(read_jsonl(out))
    sf.write(tsv.parent / "wavs" / "7.wav", tone(0.9, seed=7, freq=333), SR)
    with open(tsv, "a", encoding="utf-8") as f:
        f.write("wavs/7.wav\tsentence seven\n")
    for index in range(2):
        assert run_asr(tsv, out, "--num-shards", "2", "--shard-index", str(index)) == 0
    assert "changed since this shard finished: making it again" in caplog.text
    assert sharding.main(["--output", str(out), "--num-shards", "2"]) == 0
    assert len(read_jsonl(out)) == before + 1
    marker = Shard(2, 0).done_path(out)
    mtime = marker.stat().st_mtime_ns
    assert run_asr(tsv, out, "--num-shards", "2", "--shard-index", "0") == 0  # unchanged: still skipped
    assert marker.stat().st_mtime_ns == mtime
    assert run_asr(tsv, out, "--num-shards", "2", "--shard-index", "0", "--lang", "zh") == 0  # another setting
    assert marker.stat().st_mtime_ns != mtime
