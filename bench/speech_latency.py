"""Speaking chat: time from the first text token to the first audio chunk, and to the first token.

Starter models (whisper-base + Qwen2.5-0.5B) when converted, else the tiny model; the unit head
(LLaMA-Omni size: 2 layers, ×25 upsampling, 1000 units) and `configs/vocoder_cpu.yaml` are randomly
initialised — timing does not depend on their values, but how many units an untrained head emits per
token does, so the number only becomes meaningful with a trained head. Goal: first text token ->
first audio chunk <= 300 ms.

    python bench/speech_latency.py [--chunk-units 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk-units", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import llasm
    from llasm.io import llasm_home
    from llasm.unit_head import CtcUnitHead
    from llasm.vocoder import UnitHifiGan, UnitVocoderConfig

    home = Path(llasm_home())
    starter = (home / "whisper-base").is_dir() and (home / "qwen2.5-0.5b-instruct").is_dir()
    model, _ = llasm.build_model(ROOT / "configs" / "model" / ("starter.yaml" if starter else "tiny.yaml"))
    head = {"num_units": 1000, "upsample_factor": 25, "hidden_size": 512, "num_layers": 2, "num_heads": 8,
            "intermediate_size": 2048}
    model.config.unit_head = head
    model.unit_head = CtcUnitHead(head, input_size=model.config.text_config.hidden_size)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.unit_head.parameters():  # an untrained head: make units win over the blank
            p.add_(torch.randn_like(p) * 0.3)
    model.eval()
    config = UnitVocoderConfig.from_yaml(ROOT / "configs" / "vocoder_cpu.yaml")
    config.num_units = 1000
    model.set_vocoder(UnitHifiGan(config).eval())

    to_text, to_audio, gaps = [], [], []
    for i in range(args.repeats + 1):  # the first run warms up
        start = time.perf_counter()
        first_text = first_audio = None
        stream = model.chat_stream(text="What is the capital of France? Answer in one sentence.",
                                   max_new_tokens=24, chunk_units=args.chunk_units)
        for kind, _ in stream:
            now = time.perf_counter()
            if kind == "text" and first_text is None:
                first_text = now
            if kind == "audio":
                first_audio = now
                break
        stream.close()
        if i and first_text is not None and first_audio is not None:
            to_text.append(first_text - start)
            to_audio.append(first_audio - start)
            gaps.append(first_audio - first_text)
    print(f"model: {'starter' if starter else 'tiny'}; unit head 2x512, x25, K=1000; vocoder_cpu; "
          f"chunk {args.chunk_units} units; {args.threads} threads; median of {len(gaps)}")
    print(f"  request -> first text token   {1000 * statistics.median(to_text):7.0f} ms")
    print(f"  request -> first audio chunk  {1000 * statistics.median(to_audio):7.0f} ms")
    gap = statistics.median(gaps)
    print(f"  first text token -> first audio chunk {1000 * gap:7.0f} ms  (goal <= 300 ms: "
          f"{'met' if gap <= 0.3 else 'NOT met'})")


if __name__ == "__main__":
    main()
