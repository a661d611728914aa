"""Spoken question -> first reply token: llasm (end to end) vs the ASR -> LLM cascade, in one run.

Both use the same Whisper and the same LLM (the starter models under $LLASM_HOME, else the tiny
random model, noted in the output), on the same CPU threads:

  llasm    load audio -> processor (mel) -> Whisper encoder + adaptor -> one LLM prefill over the
           audio tokens -> first token.
  cascade  load audio -> Whisper transcribes with its decoder (greedy; the whole transcript is
           needed before the LLM can start; language given, which only helps the cascade) -> the
           same LLM, text-only chat through the same llasm model (``model.chat(text=transcript)``)
           -> first token.

The first token is timestamped by a streamer hook inside ``generate`` (the prompt put is skipped).
Questions are short English and Chinese sentences synthesized with espeak-ng (en-us,
cmn-latn-pinyin) and resampled to 16 kHz by ``llasm.audio.load_audio``. One warm-up pass, then
the median over questions per system. Goal: llasm / cascade <= 0.4.

    python bench/latency.py [--threads 2] [--repeats 1] [--model configs/model/starter.yaml]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers.generation.streamers import BaseStreamer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llasm.audio import load_audio  # noqa: E402
from llasm.io import llasm_home  # noqa: E402

QUESTIONS = [
    ("en", "en-us", "What is the capital of France?"),
    ("en", "en-us", "How many legs does a spider have?"),
    ("en", "en-us", "Can you recommend a good book for the weekend?"),
    ("zh", "cmn-latn-pinyin", "今天天气怎么样？"),
    ("zh", "cmn-latn-pinyin", "中国最长的河流是哪一条？"),
    ("zh", "cmn-latn-pinyin", "请给我讲一个简短的笑话。"),
]


class FirstToken(BaseStreamer):
    """Records perf_counter() at the first generated token (generate's first put is the prompt)."""

    def __init__(self):
        self.puts = 0
        self.at = None
        self.cpu = None  # process CPU seconds (all threads) at the first token: robust to other load

    def put(self, value):
        self.puts += 1
        if self.puts == 2 and self.at is None:
            self.at, self.cpu = time.perf_counter(), time.process_time()

    def end(self):
        if self.at is None:  # a prompt-only generate (should not happen with max_new_tokens=1)
            self.at, self.cpu = time.perf_counter(), time.process_time()


def synthesize(folder: Path) -> list[tuple[str, str, Path]]:
    if not shutil.which("espeak-ng"):
        raise SystemExit("espeak-ng is needed to synthesize the questions (apt-get install espeak-ng)")
    out = []
    for i, (lang, voice, text) in enumerate(QUESTIONS):
        path = folder / f"q{i}_{lang}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
        out.append((lang, text, path))
    return out


def load_models(spec: str):
    import llasm

    home = Path(llasm_home())
    whisper_dir = home / "whisper-base"
    if spec == "starter" and (whisper_dir / "config.json").exists() and (home / "qwen2.5-0.5b-instruct" / "config.json").exists():
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        model, _ = llasm.build_model(ROOT / "configs" / "model" / "starter.yaml")
        whisper = WhisperForConditionalGeneration.from_pretrained(whisper_dir, dtype=torch.float32).eval()
        asr_processor = WhisperProcessor.from_pretrained(whisper_dir)
        note = "starter models: whisper-base + qwen2.5-0.5b-instruct (adaptor untrained: answers meaningless, timing real)"
        return model.eval(), whisper, asr_processor, note
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from llasm.io import load_yaml

    tiny = load_yaml(ROOT / "configs" / "model" / "tiny.yaml")
    model, _ = llasm.build_model(tiny)
    torch.manual_seed(0)
    whisper = WhisperForConditionalGeneration(WhisperConfig(**tiny["audio"]["config"])).eval()
    note = (f"NOTE: starter models missing under {home} (run `make starter`); tiny random models instead — "
            "the transcript is random tokens (capped at 20), so these numbers say little")
    return model.eval(), whisper, WhisperFeatureExtractor(feature_size=whisper.config.num_mel_bins), note


@torch.inference_mode()
def run_llasm(model, path: Path) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    audio = load_audio(path)
    hook = FirstToken()
    model.chat(audio=audio, max_new_tokens=1, streamer=hook)
    return hook.at - start, hook.cpu - cpu


@torch.inference_mode()
def run_cascade(model, whisper, asr_processor, path: Path, lang: str) -> tuple[float, float, float, str]:
    start, cpu = time.perf_counter(), time.process_time()
    audio = load_audio(path)
    extractor = getattr(asr_processor, "feature_extractor", asr_processor)
    features = extractor(audio, sampling_rate=16_000, return_tensors="pt").input_features
    if hasattr(asr_processor, "tokenizer"):
        ids = whisper.generate(features, language=lang, task="transcribe", do_sample=False, num_beams=1)
        transcript = asr_processor.tokenizer.batch_decode(ids, skip_special_tokens=True)[0].strip()
    else:  # tiny fallback: random Whisper without a generation config
        ids = whisper.generate(features, max_new_tokens=20, do_sample=False, decoder_start_token_id=1)
        transcript = " ".join(str(i) for i in ids[0].tolist())
    asr_done = time.perf_counter()
    hook = FirstToken()
    model.chat(text=transcript or "?", max_new_tokens=1, streamer=hook)
    return hook.at - start, hook.cpu - cpu, asr_done - start, transcript


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="timed passes over the questions")
    parser.add_argument("--model", default="starter", choices=["starter", "tiny"])
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    model, whisper, asr_processor, note = load_models(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        questions = synthesize(Path(tmp))
        for lang, _, path in questions[:1] + questions[3:4]:  # warm-up (both languages, both systems)
            run_llasm(model, path)
            run_cascade(model, whisper, asr_processor, path, lang)
        llasm_t, cascade_t, asr_t, llasm_cpu, cascade_cpu = [], [], [], [], []
        print(note)
        print(f"torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}, "
              f"load average before: {os.getloadavg()[0]:.1f} (other jobs on the machine skew timings)\n")
        print(f"{'question':<34} {'sec':>5} {'llasm':>8} {'cascade':>8} {'(asr)':>8}  transcript")
        for _ in range(args.repeats):
            for lang, text, path in questions:
                seconds = len(load_audio(path)) / 16_000
                a, a_cpu = run_llasm(model, path)
                c, c_cpu, asr, transcript = run_cascade(model, whisper, asr_processor, path, lang)
                llasm_cpu.append(a_cpu)
                cascade_cpu.append(c_cpu)
                llasm_t.append(a)
                cascade_t.append(c)
                asr_t.append(asr)
                print(f"{text:<34.34} {seconds:>5.1f} {a * 1e3:>6.0f}ms {c * 1e3:>6.0f}ms {asr * 1e3:>6.0f}ms  {transcript[:40]}")
    a, c, asr = statistics.median(llasm_t), statistics.median(cascade_t), statistics.median(asr_t)
    print(f"\nmedian time to first token over {len(llasm_t)} spoken questions:")
    print(f"  llasm    {a * 1e3:7.0f} ms")
    print(f"  cascade  {c * 1e3:7.0f} ms  (of which Whisper transcription {asr * 1e3:.0f} ms)")
    print(f"  load average after: {os.getloadavg()[0]:.1f}")
    a_cpu, c_cpu = statistics.median(llasm_cpu), statistics.median(cascade_cpu)
    print(f"  CPU time (process, all threads): llasm {a_cpu * 1e3:.0f} ms, cascade {c_cpu * 1e3:.0f} ms, "
          f"ratio {a_cpu / c_cpu:.2f}")
    ratio = a / c
    print(f"  ratio llasm/cascade = {ratio:.2f}  (goal <= 0.4: {'met' if ratio <= 0.4 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
