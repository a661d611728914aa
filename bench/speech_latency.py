"""Speaking chat: time from the first text token to the first audio chunk, and to the first token.

With ``--model`` (a stage-3 checkpoint, e.g. ``outputs/speech-demo/stage3/final`` from
``make speech-demo``) and ``--vocoder`` (a token2wav dir, e.g. that demo's ``token2wav``: units ->
durations + selected mel frames -> Griffin-Lim) the trained head and token2wav speak; both default to that demo's outputs when
they exist. Otherwise: the starter models (whisper-base + Qwen2.5-0.5B, else the tiny model) with a
random unit head — the speech demo's (``configs/speech_demo/stage3.yaml``: phonemes, x5 upsampling) or,
with ``--input states``, LLaMA-Omni's size (2 layers, x25 upsampling) — of 500 units and a random
``configs/token2wav_cpu.yaml`` token2wav (its decoder's durations, unit selection over 137 minutes of
random frames, Griffin-Lim; ``--token2wav unit_hifigan``: a
random ``configs/vocoder_cpu.yaml``) — timing does not depend on their values, but how many units a
head emits per token does, so only a trained head gives the real number. Text is streamed as soon as a token is chosen; the first audio chunk needs that token's
hidden state (with ``unit_head.state: output``, the default of stage 3 and of the random states head here,
the state that chose it: no extra LLM step; with ``input`` one more step) — for a head on phonemes, the
next word to begin — and ``--first-chunk-units`` units; by default the first chunk is made without right
context: the vocoder's, unit selection's and the phoneme head's look-ahead (``--first-chunk-context -1``:
wait for all of it, exact). It prints how much speech the first chunk holds and when the second came
(playback waits when the second comes later than the first ends).
Goal: first text token -> first audio chunk <= 300 ms.

    python bench/speech_latency.py [--model DIR --vocoder DIR] [--first-chunk-units 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk-units", type=int, default=40)
    parser.add_argument("--first-chunk-units", type=int, default=10)
    parser.add_argument("--input", choices=["phonemes", "states"], default="phonemes",
                        help="random head only: what it reads (unit_head.input; phonemes: the speech demo's head)")
    parser.add_argument("--state", choices=["input", "output"], default="output",
                        help="random states head only: which LLM state stands for a token (unit_head.state)")
    parser.add_argument("--first-chunk-context", type=int, default=0,
                        help="right-context frames for the first chunk (-1: the full receptive field, exact)")
    parser.add_argument("--model", default=str(ROOT / "outputs" / "speech-demo" / "stage3" / "final"))
    parser.add_argument("--vocoder", default=str(ROOT / "outputs" / "speech-demo" / "token2wav"))
    parser.add_argument("--token2wav", choices=["unit_mel", "unit_hifigan"], default="unit_mel",
                        help="the random token2wav's kind when no trained one is given")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import llasm
    from llasm.io import llasm_home
    from llasm.speech.mel_decoder import UnitMelDecoder
    from llasm.speech.mel_training import load_token2wav_configs
    from llasm.speech.token2wav import UnitMelToken2Wav, load_token2wav
    from llasm.speech.vocoder import UnitHifiGan
    from llasm.speech.vocoder_config import UnitVocoderConfig

    trained = Path(args.model).is_dir() and Path(args.vocoder).is_dir()
    if trained:
        model = llasm.LlasmForConditionalGeneration.from_pretrained(args.model).eval()
        model.set_vocoder(load_token2wav(args.vocoder))
        label = f"trained: {args.model} + {args.vocoder}"
    else:
        home = Path(llasm_home())
        starter = (home / "whisper-base").is_dir() and (home / "qwen2.5-0.5b-instruct").is_dir()
        model, _ = llasm.build_model(ROOT / "configs" / "model" / ("starter.yaml" if starter else "tiny.yaml"))
        if args.input == "phonemes":
            from llasm.training.config import load_config

            head = {**load_config(ROOT / "configs" / "speech_demo" / "stage3.yaml").unit_head, "num_units": 500}
        else:
            head = {"num_units": 500, "upsample_factor": 25, "hidden_size": 512, "num_layers": 2, "num_heads": 8,
                    "intermediate_size": 2048, "state": args.state}
        model.add_unit_head(head)
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.unit_head.parameters():  # an untrained head: make units win over the blank
                p.add_(torch.randn_like(p) * 0.3)
        model.eval()
        if args.token2wav == "unit_mel":
            token2wav, decoder, _ = load_token2wav_configs(ROOT / "configs" / "token2wav_cpu.yaml",
                                                           ["mel_decoder.num_units=500"])
            selection = None
            if token2wav.mel_source == "unit_selection":  # the demo's corpus size: 137 min of speech
                sys.path.insert(0, str(ROOT / "bench"))
                from token2wav_rtf import random_selection

                selection = random_selection(500, decoder.mel, 137.0, token2wav.unit_selection)
            model.set_vocoder(UnitMelToken2Wav(UnitMelDecoder(decoder) if token2wav.needs_decoder else None, token2wav,
                                               selection=selection))
        else:
            config = UnitVocoderConfig.from_yaml(ROOT / "configs" / "vocoder_cpu.yaml")
            config.num_units = 500
            model.set_vocoder(UnitHifiGan(config).eval())
        shape = "the demo's, on phonemes" if args.input == "phonemes" else f"2x512 on states, x25, state {args.state}"
        label = (f"{'starter' if starter else 'tiny'} with a RANDOM unit head ({shape}, K=500) "
                 f"and a random {args.token2wav} token2wav")

    to_text, to_audio, gaps, pieces, held, second = [], [], [], [], [], []
    for i in range(args.repeats + 1):  # the first run warms up
        start = time.perf_counter()
        first_text = first_audio = None
        texts, chunks = 0, []
        stream = model.chat_stream(text="What is the capital of France? Answer in one sentence.",
                                   max_new_tokens=24, chunk_units=args.chunk_units,
                                   first_chunk_units=args.first_chunk_units,
                                   first_chunk_context=None if args.first_chunk_context < 0 else args.first_chunk_context)
        for kind, value in stream:
            now = time.perf_counter()
            if kind == "text" and not chunks:
                texts += 1
                first_text = first_text or now
            if kind == "audio":
                chunks.append((now, len(value)))
                first_audio = chunks[0][0]
                if len(chunks) == 2:  # the second chunk: does playback of the first stall before it?
                    break
        stream.close()
        if i and first_text is not None and first_audio is not None:
            to_text.append(first_text - start)
            to_audio.append(first_audio - start)
            gaps.append(first_audio - first_text)
            pieces.append(texts)
            held.append(chunks[0][1] / 16000)
            if len(chunks) == 2:
                second.append(chunks[1][0] - chunks[0][0])
    if not gaps:
        raise SystemExit("no audio was produced (the unit head emitted no unit within 24 tokens)")
    print(f"model: {label}; first chunk {args.first_chunk_units} units (right context "
          f"{'full' if args.first_chunk_context < 0 else args.first_chunk_context} frames), then {args.chunk_units}; "
          f"{args.threads} threads; median of {len(gaps)}")
    print(f"  request -> first text token   {1000 * statistics.median(to_text):7.0f} ms")
    print(f"  request -> first audio chunk  {1000 * statistics.median(to_audio):7.0f} ms "
          f"(after {statistics.median(pieces):.0f} text pieces; it holds {1000 * statistics.median(held):.0f} ms of "
          "audio" + (f", the second chunk came {1000 * statistics.median(second):.0f} ms later)" if second else ")"))
    gap = statistics.median(gaps)
    print(f"  first text token -> first audio chunk {1000 * gap:7.0f} ms  (goal <= 300 ms: "
          f"{'met' if gap <= 0.3 else 'NOT met'})")


if __name__ == "__main__":
    main()
