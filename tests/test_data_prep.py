"""ASR data preparation: every corpus reader, the rejects, the CLI, and the instruction pools.

All inputs are tiny corpora written into tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import tarfile

import numpy as np
import pytest
import soundfile as sf

from llasm.audio import load_audio
from llasm.evaluation import main as eval_main
from llasm.evaluation.items import load_asr_items
from llasm.io import read_jsonl
from llasm.lang import detect_lang
from llasm.prep import asr, corpora
from llasm.prep.prompts import ASR_INSTRUCTIONS_EN, ASR_INSTRUCTIONS_ZH, SPEECH_TOKEN, asr_human_value


def tone(path, seconds=0.5, freq=220.0, sr=16_000, fmt=None):
    """A short sine clip (different ``freq`` -> different content hash)."""
    t = np.arange(int(seconds * sr)) / sr
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format=fmt)
    return path


def by_id(items):
    return {item["id"]: item for item in items}


# ------------------------------------------------------------------------------------ prompts


def test_prompt_pools_are_large_unique_and_in_their_language():
    assert len(ASR_INSTRUCTIONS_EN) >= 60 and len(ASR_INSTRUCTIONS_ZH) >= 60
    assert len(set(ASR_INSTRUCTIONS_EN)) == len(ASR_INSTRUCTIONS_EN)
    assert len(set(ASR_INSTRUCTIONS_ZH)) == len(ASR_INSTRUCTIONS_ZH)
    assert all(detect_lang(p) == "en" for p in ASR_INSTRUCTIONS_EN)
    assert all(detect_lang(p) == "zh" for p in ASR_INSTRUCTIONS_ZH)
    assert not any(SPEECH_TOKEN in p for p in ASR_INSTRUCTIONS_EN + ASR_INSTRUCTIONS_ZH)


def test_asr_human_value_places_speech_first_or_last_and_is_seeded():
    rng = random.Random(0)
    values = [asr_human_value(rng, "zh") for _ in range(200)]
    assert all(v.count(SPEECH_TOKEN) == 1 for v in values)
    starts = sum(v.startswith(SPEECH_TOKEN + "\n") for v in values)
    ends = sum(v.endswith("\n" + SPEECH_TOKEN) for v in values)
    assert starts + ends == 200 and 50 < starts < 150
    assert len({v.replace(SPEECH_TOKEN, "").strip() for v in values}) > 40  # the pool is really used
    assert values == [asr_human_value(r, "zh") for r in [random.Random(0)] for _ in range(200)]


def test_detect_lang():
    assert detect_lang("今天天气很好") == "zh"
    assert detect_lang("我用 iPhone") == "zh"
    assert detect_lang("hello world") == "en"
    assert detect_lang("") == "en"


# ------------------------------------------------------------------------------------ readers


def make_librispeech(root):
    chapter = root / "train-clean-100" / "1089" / "134686"
    tone(chapter / "1089-134686-0000.flac", freq=200)
    tone(chapter / "1089-134686-0001.flac", freq=300)
    (chapter / "1089-134686.trans.txt").write_text(
        "1089-134686-0000 HE HOPED THERE WOULD BE STEW FOR DINNER\n1089-134686-0001 STUFF IT INTO YOU\n")
    chapter2 = root / "train-clean-100" / "121" / "121726"
    tone(chapter2 / "121-121726-0000.flac", freq=400)
    (chapter2 / "121-121726.trans.txt").write_text("121-121726-0000 ALSO A POPULAR CONTRIVANCE\n")
    return root


def test_read_librispeech(tmp_path):
    root = make_librispeech(tmp_path / "LibriSpeech")
    utts = list(corpora.read_librispeech(root))
    assert len(utts) == 3
    audio, text, utt_id = utts[-1]  # plain 3-tuple unpacking; files in sorted path order
    assert utt_id == "libri-121-121726-0000" and text == "also a popular contrivance"
    assert audio.name == "121-121726-0000.flac" and audio.exists() and utts[-1].lang == "en"


def make_aishell(root):
    data = root / "data_aishell"
    (data / "transcript").mkdir(parents=True)
    (data / "transcript" / "aishell_transcript_v0.8.txt").write_text(
        "BAC009S0002W0122 而 对 楼市 成交 抑制 作用 最 大 的 限 购\n"
        "BAC009S0002W0123 也 成为 地方 政府 的 眼中 钉\n"
        "BAC009S0764W0121 甚至 出现 交易 几乎 停滞 的 情况\n", encoding="utf-8")
    tone(data / "wav" / "train" / "S0002" / "BAC009S0002W0122.wav", freq=210)
    tone(data / "wav" / "train" / "S0002" / "BAC009S0002W0123.wav", freq=220)
    tone(data / "wav" / "train" / "S0002" / "BAC009S0002W0999.wav", freq=230)  # no transcript line
    tone(data / "wav" / "test" / "S0764" / "BAC009S0764W0121.wav", freq=240)
    return root


def test_read_aishell_removes_word_spaces_and_filters_split(tmp_path):
    root = make_aishell(tmp_path / "aishell")
    train = {u.id: u for u in corpora.read_aishell(root, "train")}  # parent of data_aishell is accepted
    assert set(train) == {"aishell-BAC009S0002W0122", "aishell-BAC009S0002W0123", "aishell-BAC009S0002W0999"}
    assert train["aishell-BAC009S0002W0122"].text == "而对楼市成交抑制作用最大的限购"
    assert train["aishell-BAC009S0002W0999"].text is None
    assert [u.id for u in corpora.read_aishell(root / "data_aishell", "test")] == ["aishell-BAC009S0764W0121"]
    items, rejects = asr.build_asr_items(corpora.read_aishell(root, "train"), tmp_path / "out.jsonl", progress=False)
    assert len(items) == 2 and all(i["lang"] == "zh" for i in items)
    assert rejects == [{"source": str(root / "data_aishell/wav/train/S0002/BAC009S0002W0999.wav"),
                        "id": "aishell-BAC009S0002W0999", "reason": "no transcript for this audio"}]


def test_read_commonvoice_tsv_with_locale_and_mp3_clips(tmp_path):
    cv = tmp_path / "cv-corpus" / "zh-CN"
    tone(cv / "clips" / "common_voice_zh-CN_1.mp3", freq=250, fmt="MP3")
    tone(cv / "clips" / "common_voice_zh-CN_2.mp3", freq=260, fmt="MP3")
    (cv / "train.tsv").write_text(
        "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"
        "c1\tcommon_voice_zh-CN_1.mp3\t你好 世界\t2\t0\t\t\t\tzh-CN\t\n"
        "c2\tcommon_voice_zh-CN_2.mp3\t\"引号\"不会出错\t2\t0\t\t\t\tzh-CN\t\n", encoding="utf-8")
    utts = list(corpora.read_commonvoice(cv, "train"))
    assert [(u.id, u.text, u.lang) for u in utts] == [
        ("cv-common_voice_zh-CN_1", "你好世界", "zh"), ("cv-common_voice_zh-CN_2", "\"引号\"不会出错", "zh")]
    assert asr.main(["--format", "commonvoice", "--input", str(cv / "train.tsv"),
                     "--output", str(tmp_path / "cv.jsonl")]) == 0
    items = read_jsonl(tmp_path / "cv.jsonl")
    assert [i["audios"] for i in items] == [["cv-corpus/zh-CN/clips/common_voice_zh-CN_1.mp3"],
                                            ["cv-corpus/zh-CN/clips/common_voice_zh-CN_2.mp3"]]


def test_read_tsv_relative_paths_and_header(tmp_path):
    tone(tmp_path / "clips" / "a.wav", freq=300)
    tone(tmp_path / "b.flac", freq=310)
    (tmp_path / "list.tsv").write_text(
        f"path\ttext\nclips/a.wav\thello there\n{tmp_path / 'b.flac'}\t你好\n", encoding="utf-8")
    utts = list(corpora.read_tsv(tmp_path / "list.tsv"))
    assert [(u.audio, u.text, u.id) for u in utts] == [
        (tmp_path / "clips" / "a.wav", "hello there", "tsv-a"), (tmp_path / "b.flac", "你好", "tsv-b")]
    items, rejects = asr.build_asr_items(utts, tmp_path / "out" / "x.jsonl", progress=False)
    assert not rejects
    assert [i["lang"] for i in items] == ["en", "zh"]  # detected from the text
    assert items[0]["audios"] == [str(tmp_path / "clips" / "a.wav")]  # outside the output folder: absolute


def test_rejects_corrupt_empty_duplicates(tmp_path):
    good = tone(tmp_path / "good.wav", freq=300)
    shutil.copy(good, tmp_path / "copy.wav")  # same content, other name
    pcm, sr = sf.read(good, dtype="int16")
    sf.write(tmp_path / "other.flac", pcm, sr)  # same samples, other container: a duplicate too
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    tone(tmp_path / "short.wav", seconds=0.01, freq=500)
    tone(tmp_path / "fine.wav", freq=600)
    (tmp_path / "list.tsv").write_text(
        "good.wav\tone\n"
        "good.wav\tone again\n"  # same path
        "copy.wav\tone copy\n"
        "other.flac\tone flac\n"
        "corrupt.wav\tbroken\n"
        "missing.wav\tgone\n"
        "short.wav\ttoo short\n"
        "fine.wav\t   \n"  # empty transcript
        , encoding="utf-8")
    output = tmp_path / "asr.jsonl"
    assert asr.main(["--format", "tsv", "--input", str(tmp_path / "list.tsv"), "--output", str(output),
                     "--lang", "en"]) == 0
    items = read_jsonl(output)
    assert [i["audios"] for i in items] == [["good.wav"]]
    rejects = {r["source"].rsplit("/", 1)[-1]: r["reason"] for r in read_jsonl(tmp_path / "asr.rejects.jsonl")}
    assert rejects["fine.wav"] == "empty transcript"
    assert rejects["copy.wav"].startswith("duplicate audio content") and "good.wav" in rejects["copy.wav"]
    assert rejects["other.flac"].startswith("duplicate audio content")
    assert rejects["corrupt.wav"].startswith("unreadable audio:") and "cannot decode" in rejects["corrupt.wav"]
    assert "file not found" in rejects["missing.wav"]
    assert "too short" in rejects["short.wav"]
    assert len(read_jsonl(tmp_path / "asr.rejects.jsonl")) == 7  # incl. the repeated path
    assert not list(tmp_path.glob(".*.tmp"))


def test_no_check_audio_still_catches_byte_duplicates(tmp_path):
    tone(tmp_path / "a.wav", freq=300)
    shutil.copy(tmp_path / "a.wav", tmp_path / "b.wav")
    (tmp_path / "bad.wav").write_bytes(b"garbage")
    (tmp_path / "l.tsv").write_text("a.wav\tx\nb.wav\ty\nbad.wav\tz\n")
    items, rejects = asr.build_asr_items(corpora.read_tsv(tmp_path / "l.tsv"), tmp_path / "o.jsonl",
                                         check_audio=False, progress=False)
    assert [i["id"] for i in items] == ["tsv-a", "tsv-bad"]  # not decoded, so not caught
    assert [r["id"] for r in rejects] == ["tsv-b"]


def test_librispeech_cli_end_to_end(tmp_path):
    root = make_librispeech(tmp_path / "LibriSpeech")
    output = tmp_path / "data" / "libri.jsonl"
    argv = ["--format", "librispeech", "--input", str(root), "--split", "train-clean-100", "--output", str(output),
            "--seed", "3", "--workers", "2"]
    assert asr.main(argv) == 0
    items = by_id(read_jsonl(output))
    item = items["libri-1089-134686-0000"]
    assert item["lang"] == "en"
    assert item["audios"] == [str(root / "train-clean-100/1089/134686/1089-134686-0000.flac")]  # outside: absolute
    human, gpt = item["conversations"]
    assert human["from"] == "human" and human["value"].count(SPEECH_TOKEN) == 1
    assert gpt == {"from": "gpt", "value": "he hoped there would be stew for dinner"}
    assert read_jsonl(tmp_path / "data" / "libri.rejects.jsonl") == []
    # audio paths resolve against the JSONL's folder
    assert load_audio(output.parent / item["audios"][0]).shape == (8000,)
    # same seed -> same file; another seed -> other instructions
    first = output.read_text()
    assert asr.main(argv) == 0 and output.read_text() == first
    assert asr.main(argv[:-4] + ["--seed", "4"]) == 0 and output.read_text() != first
    assert asr.main(argv[:-4] + ["--limit", "1"]) == 0 and len(read_jsonl(output)) == 1


def test_missing_corpus_is_a_clean_error(tmp_path, capsys):
    assert asr.main(["--format", "aishell", "--input", str(tmp_path), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "aishell_transcript_v0.8.txt" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- HF


def hf_dataset(tmp_path):
    """A tiny Dataset with an Audio column, built without torchcodec (bytes + path dicts, then cast)."""
    import io

    import datasets

    rows = []
    for i, freq in enumerate((300, 350, 300)):  # the third duplicates the first
        buf = io.BytesIO()
        t = np.arange(12_000) / 24_000  # 24 kHz, 0.5 s: must come out resampled to 16 kHz
        sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 24_000, format="WAV")
        rows.append({"bytes": buf.getvalue(), "path": f"clip{i}.wav"})
    ds = datasets.Dataset.from_dict({"audio": rows, "sentence": ["hello", "你好 世界", "dup"]})
    return ds.cast_column("audio", datasets.Audio())


def test_hf_dataset_object_and_disk_folder(tmp_path):
    ds = hf_dataset(tmp_path)
    items, rejects = asr.build_asr_items(corpora.read_hf(ds), tmp_path / "hf" / "out.jsonl", progress=False)
    assert [i["id"] for i in items] == ["hf-0000000", "hf-0000001"]
    assert [r["reason"].split(" (")[0] for r in rejects] == ["duplicate audio content"]
    assert items[1]["lang"] == "zh" and items[1]["conversations"][1]["value"] == "你好 世界"
    clip = tmp_path / "hf" / items[0]["audios"][0]
    assert clip.suffix == ".flac" and items[0]["audios"][0].startswith("wavs/hf-0000000-")
    assert sf.info(clip).samplerate == 16_000 and load_audio(clip).shape == (8000,)

    ds.save_to_disk(str(tmp_path / "ds"))
    output = tmp_path / "out2" / "hf.jsonl"
    assert asr.main(["--format", "hf", "--input", str(tmp_path / "ds"), "--output", str(output)]) == 0
    assert len(read_jsonl(output)) == 2 and len(list((output.parent / "wavs").glob("*.flac"))) == 2
    assert json.loads(output.read_text().splitlines()[0])["audios"] == items[0]["audios"]  # named by content


def test_two_hf_datasets_into_one_folder_keep_their_audio(tmp_path):
    """Both datasets number their rows hf-0000000...; their clips must not overwrite each other."""
    hf_dataset(tmp_path).save_to_disk(str(tmp_path / "a"))
    hf_dataset(tmp_path).select([1]).save_to_disk(str(tmp_path / "b"))  # same id, other clip than a's hf-0000000
    out = tmp_path / "data"
    assert asr.main(["--format", "hf", "--input", str(tmp_path / "a"), "--output", str(out / "a.jsonl")]) == 0
    assert asr.main(["--format", "hf", "--input", str(tmp_path / "b"), "--output", str(out / "b.jsonl")]) == 0
    a, b = read_jsonl(out / "a.jsonl")[0], read_jsonl(out / "b.jsonl")[0]
    assert a["id"] == b["id"] == "hf-0000000" and a["audios"] != b["audios"]
    # a's first clip is still the 300 Hz tone it was made from (b's is 350 Hz)
    for row, freq in ((a, 300), (b, 350)):
        samples = load_audio(out / row["audios"][0])
        peak = np.argmax(np.abs(np.fft.rfft(samples))) * 16_000 / len(samples)
        assert abs(peak - freq) < 5


def test_a_tree_with_several_splits_needs_split(tmp_path, capsys):
    root = make_librispeech(tmp_path / "LibriSpeech")
    chapter = root / "test-clean" / "61" / "70968"
    tone(chapter / "61-70968-0000.flac", freq=500)
    (chapter / "61-70968.trans.txt").write_text("61-70968-0000 HE BEGAN A CONFUSED COMPLAINT\n")
    out = tmp_path / "o.jsonl"
    assert asr.main(["--format", "librispeech", "--input", str(root), "--output", str(out)]) == 2
    assert "test-clean, train-clean-100: choose one with --split" in capsys.readouterr().err
    assert asr.main(["--format", "librispeech", "--input", str(root), "--split", "test-clean", "--output", str(out)]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["libri-61-70968-0000"]
    assert asr.main(["--format", "librispeech", "--input", str(root), "--split", "all", "--output", str(out)]) == 0
    assert len(read_jsonl(out)) == 4
    aishell = make_aishell(tmp_path / "aishell")
    assert asr.main(["--format", "aishell", "--input", str(aishell), "--output", str(out)]) == 2
    assert "test, train: choose one" in capsys.readouterr().err
    assert asr.main(["--format", "aishell", "--input", str(aishell / "data_aishell" / "wav" / "train"),
                     "--output", str(out)]) == 2  # not an AISHELL root: the reader says what it needs


# ------------------------------------------------------------- empty inputs, splits, HF columns


def tar_speakers(wav_dir, folder, inner):
    """Pack each speaker folder of ``wav_dir/inner`` into ``folder/<speaker>.tar.gz`` (members
    ``inner/<speaker>/...``) and delete the clips, as AISHELL-1 ships them."""
    folder.mkdir(parents=True, exist_ok=True)
    for speaker in sorted((wav_dir / inner).iterdir()):
        with tarfile.open(folder / f"{speaker.name}.tar.gz", "w:gz") as tar:
            tar.add(speaker, arcname=f"{inner}/{speaker.name}" if inner else speaker.name)
        shutil.rmtree(speaker)


def unpack_command(err):
    return re.search(r"unpack them first: (.*)$", err.strip()).group(1)


def test_aishell_as_downloaded_says_how_to_unpack_it(tmp_path, capsys):
    """The speaker archives in wav/ (the OpenSLR download) or in wav/train/: an error that names the
    folder and gives the command, and the command makes the tree readable."""
    for layout in ("wav", "wav/train"):
        root = make_aishell(tmp_path / layout.replace("/", "-")) / "data_aishell"
        wav = root / "wav"
        if layout == "wav":  # every archive holds train/<spk>/... or test/<spk>/...
            for split in ("train", "test"):
                tar_speakers(wav, wav, split)
                (wav / split).rmdir()
        else:
            tar_speakers(wav / "train", wav / "train", "")
        out = tmp_path / layout.replace("/", "-") / "o.jsonl"
        argv = ["--format", "aishell", "--input", str(root), "--split", "train", "--output", str(out)]
        assert asr.main(argv) == 2 and not out.exists()
        err = capsys.readouterr().err
        folder = root / layout
        archives = "2 archive(s) not unpacked (S0002.tar.gz, S0764.tar.gz)" if layout == "wav" else \
            "1 archive(s) not unpacked (S0002.tar.gz)"
        assert f"{folder} holds {archives}" in err
        assert unpack_command(err) == f'for f in {folder}/*.tar.gz; do tar -xzf "$f" -C {folder}; done'
        if layout == "wav":
            assert f"{wav / 'train'}: no such AISHELL split" in err
            assert asr.main(argv[:4] + argv[6:]) == 2  # without --split too
            assert f"{wav}: no clip found: looked for *.wav" in capsys.readouterr().err
        subprocess.run(["bash", "-c", unpack_command(err)], check=True)
        assert asr.main(argv) == 0
        assert [i["id"] for i in read_jsonl(out)] == ["aishell-BAC009S0002W0122", "aishell-BAC009S0002W0123"]


def test_an_input_without_clips_is_an_error_for_every_format(tmp_path, capsys):
    import datasets

    (tmp_path / "LibriSpeech" / "train-clean-100" / "19").mkdir(parents=True)
    aishell = make_aishell(tmp_path / "aishell") / "data_aishell"
    shutil.rmtree(aishell / "wav")
    (aishell / "wav").mkdir()
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "train.tsv").write_text("client_id\tpath\tsentence\n")
    (tmp_path / "list.tsv").write_text("path\ttext\n# nothing yet\n\n")
    features = datasets.Features({"audio": datasets.Audio(), "text": datasets.Value("string")})
    empty = datasets.Dataset.from_dict({"audio": [], "text": []}, features=features)
    empty.save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(corpora.NoClipsError, match="the dataset: no clip found: split 'test' has no row"):
        list(corpora.read_hf(datasets.DatasetDict({"test": empty})))
    cases = {"librispeech": (tmp_path / "LibriSpeech", "looked for LibriSpeech transcripts (*.trans.txt"),
             "aishell": (aishell, "looked for *.wav below it"),
             "commonvoice": (tmp_path / "cv", "no row below the header"),
             "tsv": (tmp_path / "list.tsv", "looked for 'audio_path<TAB>text' lines"),
             "hf": (tmp_path / "hf", "was saved with no row")}
    for fmt, (source, looked_for) in cases.items():
        out = tmp_path / f"{fmt}.jsonl"
        assert asr.main(["--format", fmt, "--input", str(source), "--output", str(out)]) == 2, fmt
        err = capsys.readouterr().err
        assert "no clip found" in err and str(source) in err and looked_for in err, err
        assert not out.exists()
    # a shard that owns nothing of a tiny input is fine: only a whole input without clips is an error
    tone(tmp_path / "a.wav")
    (tmp_path / "one.tsv").write_text("a.wav\thello\n")
    out = tmp_path / "one.jsonl"
    for index in (1, 0):
        assert asr.main(["--format", "tsv", "--input", str(tmp_path / "one.tsv"), "--output", str(out),
                         "--num-shards", "2", "--shard-index", str(index)]) == 0


def add_test_clean(root):
    chapter = root / "test-clean" / "61" / "70968"
    tone(chapter / "61-70968-0000.flac", freq=500)
    (chapter / "61-70968.trans.txt").write_text("61-70968-0000 HE BEGAN A CONFUSED COMPLAINT\n")
    return root


def test_a_wrong_split_names_the_splits_there(tmp_path, capsys):
    libri = add_test_clean(make_librispeech(tmp_path / "LibriSpeech"))
    aishell = make_aishell(tmp_path / "aishell")
    cv = tmp_path / "cv"
    for name in ("train", "test", "validated"):
        (cv / f"{name}.tsv").parent.mkdir(exist_ok=True)
        (cv / f"{name}.tsv").write_text("path\tsentence\n")
    (cv / "reported.tsv").write_text("sentence_id\tsentence\treason\n")  # lists no clips: not a split
    out = str(tmp_path / "o.jsonl")
    for fmt, source, wrong, there in (
            ("librispeech", libri, "train-clean-360", "test-clean, train-clean-100 (or --split all)"),
            ("aishell", aishell, "dev", "test, train (or --split all)"),
            ("commonvoice", cv, "dev", "test, train, validated (or --split all)")):
        assert asr.main(["--format", fmt, "--input", str(source), "--split", wrong, "--output", out]) == 2
        assert f"no such {dict(librispeech='LibriSpeech', aishell='AISHELL', commonvoice='Common Voice')[fmt]} " \
               f"split; the splits there: {there}" in capsys.readouterr().err


def test_rows_carry_their_split_for_eval(tmp_path):
    """--split all keeps each row's split under the key `llasm eval --split` selects by; one split labels all."""
    libri = add_test_clean(make_librispeech(tmp_path / "LibriSpeech"))
    aishell = make_aishell(tmp_path / "aishell")
    out = tmp_path / "o.jsonl"
    assert asr.main(["--format", "librispeech", "--input", str(libri), "--split", "all", "--output", str(out)]) == 0
    assert {r["id"]: r["split"] for r in read_jsonl(out)} == {
        "libri-61-70968-0000": "test-clean", "libri-1089-134686-0000": "train-clean-100",
        "libri-1089-134686-0001": "train-clean-100", "libri-121-121726-0000": "train-clean-100"}
    assert [i.id for i in load_asr_items(out, "test-clean")[0]] == ["libri-61-70968-0000"]
    assert asr.main(["--format", "librispeech", "--input", str(libri / "test-clean"), "--output", str(out)]) == 0
    assert [r["split"] for r in read_jsonl(out)] == ["test-clean"]  # the input is one split folder
    assert asr.main(["--format", "aishell", "--input", str(aishell), "--split", "all", "--output", str(out)]) == 0
    assert [(r["id"], r["split"]) for r in read_jsonl(out)] == [
        ("aishell-BAC009S0764W0121", "test"), ("aishell-BAC009S0002W0122", "train"),
        ("aishell-BAC009S0002W0123", "train")]
    items, errors = load_asr_items(out, "test")
    assert [i.id for i in items] == ["aishell-BAC009S0764W0121"] and not errors
    # a file prepared from dev-clean only: eval's default --split test says which splits it holds
    assert asr.main(["--format", "librispeech", "--input", str(libri), "--split", "test-clean", "--output", str(out)]) == 0
    with pytest.raises(SystemExit, match=r"no record has split 'test'; its records' splits: test-clean \(choose"):
        eval_main(["--model", "unused", "--asr-data", str(out), "--tasks", "asr", "--output", str(tmp_path / "e")])
    cv = tmp_path / "cv"
    for name, freq in (("train", 250), ("test", 260)):
        tone(cv / "clips" / f"{name}.wav", freq=freq)
        (cv / f"{name}.tsv").write_text(f"path\tsentence\tlocale\n{name}.wav\thello {name}\ten\n")
    assert asr.main(["--format", "commonvoice", "--input", str(cv), "--split", "all", "--output", str(out)]) == 0
    assert [(r["id"], r["split"]) for r in read_jsonl(out)] == [("cv-train", "train"), ("cv-test", "test")]
    (tmp_path / "l.tsv").write_text(f"{cv / 'clips' / 'test.wav'}\thello\n")
    assert asr.main(["--format", "tsv", "--input", str(tmp_path / "l.tsv"), "--split", "test", "--output", str(out)]) == 0
    assert [r["split"] for r in read_jsonl(out)] == ["test"]


def test_hf_splits_and_named_columns(tmp_path, capsys):
    import datasets

    ds = hf_dataset(tmp_path).rename_column("sentence", "words")
    datasets.DatasetDict({"train": ds.select([0]), "test": ds.select([1])}).save_to_disk(str(tmp_path / "dd"))
    out = tmp_path / "o.jsonl"
    argv = ["--format", "hf", "--input", str(tmp_path / "dd"), "--output", str(out)]
    assert asr.main(argv) == 2  # "words" is no known transcript column: the error names the flag
    assert "no text column among text, sentence" in (err := capsys.readouterr().err) and "--text-column NAME" in err
    assert asr.main(argv + ["--text-column", "words", "--split", "all"]) == 0
    assert [(r["id"], r["split"], r["conversations"][1]["value"]) for r in read_jsonl(out)] == [
        ("hf-train-0000000", "train", "hello"), ("hf-test-0000000", "test", "你好 世界")]
    assert asr.main(argv + ["--text-column", "words", "--audio-column", "audio", "--split", "dev"]) == 2
    assert "no split 'dev'; the splits there: train, test (or --split all)" in capsys.readouterr().err
    assert asr.main(argv + ["--text-column", "words", "--audio-column", "wav"]) == 2
    assert "--audio-column 'wav': no such column (columns: audio, words)" in capsys.readouterr().err
    assert asr.main(["--format", "tsv", "--input", str(tmp_path / "x.tsv"), "--output", str(out),
                     "--text-column", "words"]) == 2
    assert "name columns of --format hf" in capsys.readouterr().err
