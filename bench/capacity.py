"""Capacity plan for the paper scale: whisper-large-v2 + a 7B Llama-2 on 8 x A100-80GB.

Prints, per stage (1; 2 full; 2 LoRA) and ZeRO stage (2, 3), the memory per GPU, the tokens per
second from a FLOPs model, and the hours for stage 1 on 1,000 h of ASR and stage 2 on LLaSM's
199k conversations (508k clips). What is measured and what is extrapolated:

* parameter counts: exact, from the real model classes built on the ``meta`` device with the
  published configs (openai/whisper-large-v2, meta-llama/Llama-2-7b-hf = LinkSoul/Chinese-Llama-2-7b's
  architecture) and this repo's adaptor (MLP, stack 8) and LoRA settings (r 16, 7 projections);
* model states (weights, gradients, fp32 master weights, Adam moments): DeepSpeed's own estimators
  (``estimate_zero2_model_states_mem_needs`` / ``estimate_zero3_model_states_mem_needs``, no offload)
  on the TRAINED parameters, plus the frozen parameters' bf16 weights (replicated under ZeRO-2,
  partitioned under ZeRO-3: DeepSpeed's estimators assume every parameter trains);
* activations: MEASURED here, on the CPU, as the bytes autograd keeps for the backward pass
  (``torch.autograd.graph.saved_tensors_hooks``, unique storages, parameters excluded) of the
  trainer's own loss (:func:`llasm.training.losses.answer_ce`, bf16, encoder-cache inputs) on a
  scaled-down model: the full 4096 width but 1 or 2 decoder layers. A least-squares fit over
  several (layers, tokens, audio tokens, answer tokens) points gives bytes per token per layer,
  per audio token and per supervised token; EXTRAPOLATED in depth to 32 layers (the residual of a
  held-out point is printed). With gradient checkpointing the layers keep only their input
  (2 bytes x 4096 per token per layer) plus one layer's activations while it is recomputed;
* speed: a FLOPs model (forward 2 x parameters per token + causal attention 2 x layers x context x
  width; backward 2x forward when weights train, 1x for activation gradients only; +1 forward with
  checkpointing) at a STATED model-FLOPs utilisation (default 40 % of the A100's 312 bf16 TFLOPS);
  the Whisper pass is paid once per clip (encoder cache), counted separately;
* data sizes: ASSUMED per-example token counts (flags below; defaults explained in docs/capacity.md).

    python bench/capacity.py                      # the table in docs/capacity.md
    python bench/capacity.py --mfu 0.3 --gpus 16  # other utilisation / cluster
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")  # no warning on CPU

from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs  # noqa: E402
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs  # noqa: E402

from llasm.builder import build_model  # noqa: E402
from llasm.configuration import encoder_frames  # noqa: E402
from llasm.training import losses  # noqa: E402
from llasm.training.parts import apply_trainability  # noqa: E402

GIB = 2**30
A100_BF16_FLOPS = 312e12  # dense bf16 peak of an A100 (NVIDIA A100 datasheet)
# published configs (config.json of openai/whisper-large-v2 and meta-llama/Llama-2-7b-hf)
WHISPER_LARGE_V2 = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                        num_mel_bins=80, max_source_positions=1500, decoder_layers=32, decoder_attention_heads=20,
                        decoder_ffn_dim=5120, vocab_size=51865)
LLAMA2_7B = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
                 rms_norm_eps=1e-5, tie_word_embeddings=False)
LORA = {"r": 16, "alpha": 32, "dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
STAGES = {  # name -> trainable (configs/stage1_asr_align.yaml, stage2_instruct.yaml, stage2_instruct_lora.yaml)
    "stage 1": {"audio_tower": "frozen", "adaptor": "full", "language_model": "frozen"},
    "stage 2 full": {"audio_tower": "frozen", "adaptor": "full", "language_model": "full"},
    "stage 2 LoRA": {"audio_tower": "frozen", "adaptor": "full", "language_model": "lora"},
}


def spec(llm_layers: int = 32, tower_layers: int = 32) -> dict:
    """A model YAML (as a dict) of the paper-scale architecture, random weights, tokenizer-free ids."""
    return {"dtype": "bfloat16", "template": "llama2", "seed": 0,
            "audio": {"source": "whisper_encoder", "config": {**WHISPER_LARGE_V2, "encoder_layers": tower_layers}},
            "text": {"tokenizer": "builtin:tiny", "config": {**LLAMA2_7B, "num_hidden_layers": llm_layers}},
            "adaptor": {"type": "mlp", "stack_factor": 8, "hidden_size": 4096}}


# -- parameters and model states ------------------------------------------------------------
@dataclass
class Params:
    trained: int
    frozen: int
    largest_layer: int  # the biggest module's own parameters (ZeRO-3 gathers it whole)
    llm_layers_only: int  # the decoder layers' parameters (FLOPs model)
    tower: int
    adaptor: int


def count_params(trainable: dict) -> Params:
    """Exact counts of the paper model with ``trainable`` applied (built on the meta device)."""
    with torch.device("meta"):
        model, _ = build_model(spec())
        apply_trainability(model, trainable, LORA)
    unique = {id(p): p for p in model.parameters()}.values()
    trained = sum(p.numel() for p in unique if p.requires_grad)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    lm = model.language_model
    layers = sum(p.numel() for n, p in lm.named_parameters() if ".layers." in n and "lora_" not in n)
    return Params(trained, sum(p.numel() for p in unique) - trained, largest, layers,
                  sum(p.numel() for p in model.audio_tower.parameters()),
                  sum(p.numel() for p in model.adaptor.parameters()))


def model_states_bytes(params: Params, zero: int, gpus: int) -> int:
    """Per-GPU bytes of weights, gradients and optimizer states: DeepSpeed's estimator on the trained
    parameters + the frozen ones' bf16 weights (partitioned by ZeRO-3, replicated by ZeRO-2)."""
    if zero == 2:
        _, trained = estimate_zero2_model_states_mem_needs(params.trained, gpus, 1, cpu_offload=False)
        return trained + 2 * params.frozen
    _, trained, _ = estimate_zero3_model_states_mem_needs(params.trained, params.largest_layer, gpus, 1,
                                                          cpu_offload=False, cpu_offload_params=False)
    return trained + 2 * params.frozen // gpus


# -- activations, measured ------------------------------------------------------------------
def saved_bytes(model, inputs: dict, ids: list[str]) -> int:
    """Bytes autograd saves for the backward pass of the trainer's loss on ``inputs`` (unique
    storages; parameters excluded, they are model states)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = losses.answer_ce(model, model, dict(inputs), None, ids)
    del loss
    return sum(kept.values())


def example(processor, audio_seconds: float, answer_words: int, seed: int = 0) -> dict:
    """One collated training row: a spoken question of ``audio_seconds`` and a text answer, with
    encoder-cache style inputs (random whisper-large-v2 states, as the cache would hold)."""
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal(int(audio_seconds * 16000))).astype(np.float32)
    words = " ".join(f"w{rng.integers(1000)}" for _ in range(answer_words))
    item = processor.encode_conversation([
        {"role": "user", "content": [{"type": "audio", "audio": audio}, {"type": "text", "text": "Answer."}]},
        {"role": "assistant", "content": [{"type": "text", "text": words}]}])
    batch = processor.collate([item])
    frames = batch["feature_attention_mask"].sum(-1)
    states = torch.randn(len(frames), encoder_frames(int(frames.max())), WHISPER_LARGE_V2["d_model"],
                         dtype=torch.bfloat16)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": batch["labels"],
            "feature_attention_mask": batch["feature_attention_mask"], "audio_encoder_outputs": states}


@dataclass
class Activations:
    """Fitted bytes: ``base + tokens * (per_token + layers * per_layer_token) + audio * per_audio + sup * per_sup``."""

    per_layer_token: float
    per_token: float
    per_audio_token: float
    per_supervised_token: float
    base: float
    residual: float  # relative error on the held-out point (2 layers, longest input)
    seconds: float

    def bytes(self, layers: int, tokens: float, audio: float, supervised: float, checkpointing: bool = False,
              width: int = 4096) -> float:
        if checkpointing:  # each layer keeps its bf16 input; one layer's activations while recomputed
            layer_part = tokens * (layers * 2 * width + self.per_layer_token)
        else:
            layer_part = tokens * layers * self.per_layer_token
        return (self.base + tokens * self.per_token + layer_part + audio * self.per_audio_token
                + supervised * self.per_supervised_token)


def measure_activations(trainable: dict, points=None) -> Activations:
    """Fit :class:`Activations` for ``trainable`` from runs of 1- and 2-layer full-width models."""
    started = time.time()
    points = points or [(1, 4, 24), (1, 8, 24), (1, 4, 60), (2, 4, 24), (2, 8, 60), (2, 12, 90)]
    models = {}
    rows, targets = [], []
    for layers, seconds, words in points:
        if layers not in models:
            model, processor = build_model(spec(llm_layers=layers, tower_layers=1))
            apply_trainability(model, trainable, LORA)
            models[layers] = (model.train(), processor)
        model, processor = models[layers]
        inputs = example(processor, seconds, words)
        ids = inputs["input_ids"]
        audio = int((ids == model.config.audio_patch_token_id).sum())
        supervised = int((inputs["labels"][:, 1:] != -100).sum())
        tokens = ids.numel()
        rows.append([1.0, tokens, tokens * layers, audio, supervised])
        targets.append(saved_bytes(model, inputs, ["capacity"]))
    a, b = np.array(rows[:-1], dtype=float), np.array(targets[:-1], dtype=float)
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    held_out = float(np.dot(rows[-1], coef))
    base, per_token, per_layer_token, per_audio, per_sup = coef.tolist()
    return Activations(per_layer_token, per_token, per_audio, per_sup, base,
                       abs(held_out - targets[-1]) / targets[-1], time.time() - started)


# -- FLOPs, data, time ----------------------------------------------------------------------
@dataclass
class Workload:
    """Average tokens of one training example, and how many examples an epoch has."""

    name: str
    examples: float
    tokens: float  # all tokens of the row (audio + text)
    audio_tokens: float
    supervised: float  # answer tokens (the LM head runs only there: fast loss)
    audio_seconds: float  # per example (the Whisper pass, once per clip)
    epochs: int


def workloads(args) -> dict[str, Workload]:
    audio_per_s = 50 / 8  # Whisper's 50 frames/s stacked by 8: 6.25 audio tokens per second
    clip = args.asr_clip_seconds
    transcript = args.asr_text_tokens_per_second * clip
    stage1 = Workload("1,000 h ASR", args.asr_hours * 3600 / clip, audio_per_s * clip + transcript + args.template_tokens,
                      audio_per_s * clip, transcript + 1, clip, args.stage1_epochs)
    turns = args.clips / args.conversations
    q = args.question_seconds
    per_turn = audio_per_s * q + args.answer_tokens + args.turn_template_tokens
    stage2 = Workload("LLaSM 199k conv.", args.conversations, turns * per_turn + args.template_tokens,
                      turns * audio_per_s * q, turns * (args.answer_tokens + 1), turns * q, args.stage2_epochs)
    return {"stage 1": stage1, "stage 2 full": stage2, "stage 2 LoRA": stage2}


def flops_per_example(stage: str, params: Params, w: Workload, checkpointing: bool) -> tuple[float, float]:
    """``(training FLOPs, Whisper FLOPs)`` of one example (Kaplan et al. 2020's 2N per token forward,
    plus causal attention; the LM head on answer tokens only)."""
    cfg = LLAMA2_7B
    width, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    attention = 2 * layers * w.tokens**2 * width  # QK^T and AV, 2*s^2*h each per layer, halved by the causal mask
    forward = (2 * params.llm_layers_only * w.tokens + attention + 2 * width * cfg["vocab_size"] * w.supervised
               + 2 * params.adaptor * w.audio_tokens)
    weights_train = stage == "stage 2 full"
    backward = 2 * forward if weights_train else forward  # activation gradients only (+ tiny LoRA/adaptor terms)
    total = forward + backward + (forward if checkpointing else 0)
    whisper = 2 * params.tower * 50 * w.audio_seconds  # 50 encoder frames per second, once per clip
    return total, whisper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0)
    parser.add_argument("--reserve", type=float, default=0.10,
                        help="share of GPU memory kept for the CUDA context, NCCL and fragmentation")
    parser.add_argument("--mfu", type=float, default=0.40, help="model-FLOPs utilisation assumed")
    parser.add_argument("--asr-hours", type=float, default=1000)
    parser.add_argument("--asr-clip-seconds", type=float, default=10.0)
    parser.add_argument("--asr-text-tokens-per-second", type=float, default=5.0)
    parser.add_argument("--conversations", type=float, default=199_000)
    parser.add_argument("--clips", type=float, default=508_000)
    parser.add_argument("--question-seconds", type=float, default=5.0)
    parser.add_argument("--answer-tokens", type=float, default=150)
    parser.add_argument("--template-tokens", type=float, default=40, help="system prompt + chat template per row")
    parser.add_argument("--turn-template-tokens", type=float, default=15)
    parser.add_argument("--stage1-epochs", type=int, default=1)
    parser.add_argument("--stage2-epochs", type=int, default=3)
    parser.add_argument("--stage1-batch", type=int, default=16, help="micro-batch (configs/stage1_asr_align.yaml)")
    parser.add_argument("--stage2-batch", type=int, default=4, help="micro-batch (configs/stage2_instruct.yaml)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    usable = args.gpu_memory_gb * 1e9 * (1 - args.reserve)
    loads = workloads(args)

    print(f"# capacity plan: whisper-large-v2 + Llama-2-7B on {args.gpus} x {args.gpu_memory_gb:.0f} GB, "
          f"MFU {args.mfu:.0%} of {A100_BF16_FLOPS / 1e12:.0f} TFLOPS\n")
    print("## parameters (exact) and measured activations (bytes kept for backward, bf16)\n")
    print("| stage | trained | frozen | per token per layer | per audio token | per answer token | held-out error | "
          "measured in |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    measured = {}
    for stage, trainable in STAGES.items():
        params = count_params(trainable)
        acts = measure_activations(trainable)
        measured[stage] = (params, acts)
        print(f"| {stage} | {params.trained / 1e6:,.1f} M | {params.frozen / 1e9:.3f} B | "
              f"{acts.per_layer_token / 1024:.1f} KiB | {acts.per_audio_token / 1024:.1f} KiB | "
              f"{acts.per_supervised_token / 1024:.1f} KiB | {acts.residual:.2%} | {acts.seconds:.0f} s |")

    print("\n## memory per GPU (GiB) at the stage YAML's micro-batch, and the largest micro-batch that fits\n")
    print("| stage | ZeRO | model states | activations | total | checkpointing: activations | "
          "max tokens / micro-batch | with checkpointing |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for stage, (params, acts) in measured.items():
        w = loads[stage]
        batch = args.stage1_batch if stage == "stage 1" else args.stage2_batch
        layers = LLAMA2_7B["num_hidden_layers"]
        act = acts.bytes(layers, batch * w.tokens, batch * w.audio_tokens, batch * w.supervised)
        act_ckpt = acts.bytes(layers, batch * w.tokens, batch * w.audio_tokens, batch * w.supervised, True)
        per_tok = act / (batch * w.tokens)
        per_tok_ckpt = act_ckpt / (batch * w.tokens)
        for zero in (2, 3):
            states = model_states_bytes(params, zero, args.gpus)
            fits = max(0.0, usable - states)
            print(f"| {stage} | {zero} | {states / GIB:.1f} | {act / GIB:.1f} | {(states + act) / GIB:.1f} | "
                  f"{act_ckpt / GIB:.1f} | {fits / per_tok:,.0f} | {fits / per_tok_ckpt:,.0f} |")

    print(f"\n## time on {args.gpus} GPUs at {args.mfu:.0%} MFU\n")
    print("| stage | data | examples | tokens / example | tokens / epoch | tokens/s/GPU | hours / epoch | epochs | "
          "hours | + checkpointing | Whisper pass (once) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rate = args.mfu * A100_BF16_FLOPS * args.gpus
    for stage, (params, _) in measured.items():
        w = loads[stage]
        train, whisper = flops_per_example(stage, params, w, checkpointing=False)
        train_ckpt, _ = flops_per_example(stage, params, w, checkpointing=True)
        hours = w.examples * train / rate / 3600
        print(f"| {stage} | {w.name} | {w.examples:,.0f} | {w.tokens:,.0f} | {w.examples * w.tokens / 1e6:,.0f} M | "
              f"{w.tokens * rate / args.gpus / train:,.0f} | {hours:.1f} | {w.epochs} | {hours * w.epochs:.1f} | "
              f"{w.examples * train_ckpt / rate / 3600 * w.epochs:.1f} | {w.examples * whisper / rate / 3600:.2f} h |")


if __name__ == "__main__":
    main()
