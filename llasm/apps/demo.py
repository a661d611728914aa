"""`make demo`: train and evaluate a bilingual speech LLM end to end on a CPU.

    LLASM_DEMO=starter make demo   # whisper-base + Qwen2.5-0.5B, real weights, about 25 min on 2 cores
    LLASM_DEMO=tiny make demo      # the same pipeline on the tiny random model, under a minute

Steps: starter models -> speak the bundled seed corpus (+ generated sentences for vocabulary) ->
CTC warm start of the adaptor -> stage 1 (ASR alignment) -> stage 2 (LoRA, spoken instructions)
-> evaluation on the held-out seed items (llasm vs the Whisper cascade) -> one English and one
Chinese spoken question answered. Training steps are budgeted by wall time (printed). The warm start
and the two stages are ``configs/demo/{warm_start,stage1,stage2}.yaml``; this file adds the plan's
paths and budgets as dotted overrides. Outputs go to ``$LLASM_DEMO_DIR`` (default ``outputs/demo-<mode>``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llasm import settings
from llasm.builder import build_model
from llasm.evaluation.run import main as evaluate_main
from llasm.io import REPO, read_jsonl, write_jsonl
from llasm.modeling import LlasmForConditionalGeneration
from llasm.prep.seed import SEED, balanced_subset, generated_sentences, interleave_languages
from llasm.prep.synthesize import synthesize_dataset
from llasm.training.align import AlignConfig, ctc_align_adaptor
from llasm.training.config import TrainConfig, load_config
from llasm.training.encoder_cache import encode_clips
from llasm.training.trainer import train
from llasm.weights.starter import ensure_starter_models


@dataclass
class DemoPlan:
    model: str
    starter: tuple[str, ...]
    extra_sentences: int  # generated sentences per language, for vocabulary beyond the seed corpus
    seed_limit: int | None  # seed items per file (None = all)
    align_steps: int
    align_minutes: float
    stage1_minutes: float
    stage1_max_steps: int | None
    stage2_minutes: float
    stage2_max_steps: int | None
    batch_size: int
    eval_limit: int  # held-out items per task
    asr_eval_limit: int  # held-out ASR clips (both languages)
    max_new_tokens: int
    workers: int = 2
    # With a budget, stage 1 gets what is left of it after the warm start, less the time kept for
    # stage 2, the evaluation and the two answers (``reserve_minutes``); ``stage1_minutes`` at least.
    budget_minutes: float | None = None
    reserve_minutes: float = 0.0

    def stage1_budget(self, elapsed_minutes: float) -> float:
        if self.budget_minutes is None:
            return self.stage1_minutes
        return max(self.stage1_minutes, self.budget_minutes - elapsed_minutes - self.reserve_minutes)


PLANS = {
    # Budgets are wall time on a 2-core CPU: stage 1 gets what the other steps leave of 26 minutes.
    # Batch 8 and a short stage 2 won over batch 4 and a longer stage 2 (docs/experiments/demo-budget.md).
    "starter": DemoPlan(model="configs/model/starter.yaml", starter=("whisper-base", "qwen2.5-0.5b-instruct"),
                        extra_sentences=600, seed_limit=None, align_steps=1600, align_minutes=5.0,
                        stage1_minutes=5.0, stage1_max_steps=None, stage2_minutes=3.5, stage2_max_steps=None,
                        batch_size=8, eval_limit=12, asr_eval_limit=24, max_new_tokens=40,
                        budget_minutes=26.0, reserve_minutes=7.5),
    # the same pipeline on the tiny random model: shows that every step runs, in about half a minute
    "tiny": DemoPlan(model="configs/model/tiny.yaml", starter=(), extra_sentences=10, seed_limit=12,
                     align_steps=20, align_minutes=0.5, stage1_minutes=0.5, stage1_max_steps=4,
                     stage2_minutes=0.5, stage2_max_steps=4, batch_size=4, eval_limit=2, asr_eval_limit=2,
                     max_new_tokens=8),
}


class Clock:
    """Prints each step with its wall time; the demo's budget is visible as it runs."""

    def __init__(self):
        self.start = time.time()
        self.steps: list[tuple[str, float]] = []

    def step(self, name: str):
        clock = self

        class _Step:
            def __enter__(self):
                self.t = time.time()
                print(f"\n=== {name} (at {clock.elapsed():.1f} min) ===", flush=True)

            def __exit__(self, *exc):
                clock.steps.append((name, time.time() - self.t))
                print(f"=== {name}: {time.time() - self.t:.0f} s ===", flush=True)

        return _Step()

    def elapsed(self) -> float:
        return (time.time() - self.start) / 60


# -- data -----------------------------------------------------------------------------------------
def prepare_data(out: Path, plan: DemoPlan) -> dict[str, Path]:
    """Speak the seed corpus and generated sentences; write train / held-out JSONL files."""
    out.mkdir(parents=True, exist_ok=True)
    sources = {"asr_seed": SEED / "asr_sentences.jsonl", "instruct_seed": SEED / "instructions.jsonl"}
    if plan.seed_limit:  # tiny: a balanced handful of each language and split
        for name, path in list(sources.items()):
            sources[name] = write_jsonl(out / f"{name}_subset.jsonl", balanced_subset(read_jsonl(path), plan.seed_limit))
    sources["asr_generated"] = write_jsonl(out / "generated_sentences.jsonl", generated_sentences(plan.extra_sentences))
    spoken = {}
    for name, path in sources.items():
        spoken[name] = out / f"{name}.jsonl"
        counts = synthesize_dataset(path, spoken[name], config=REPO / "configs" / "tts_demo.yaml",
                                    workers=plan.workers, text_turn_ratio=0.0, seed=1)
        print(f"[data] {name}: {counts}")
    split = lambda name, s: [r for r in read_jsonl(spoken[name]) if r.get("split", "train") == s]  # noqa: E731
    files = {
        "asr_train": write_jsonl(out / "asr_train.jsonl", interleave_languages(split("asr_seed", "train") + split("asr_generated", "train"))),
        "asr_test": write_jsonl(out / "asr_test.jsonl", interleave_languages(split("asr_seed", "test"))),
        "instruct_train": write_jsonl(out / "instruct_train.jsonl", interleave_languages(split("instruct_seed", "train"))),
        "instruct_test": write_jsonl(out / "instruct_test.jsonl", interleave_languages(split("instruct_seed", "test"))),
    }
    for name, path in files.items():
        print(f"[data] {name}: {sum(1 for _ in open(path))} items -> {path}")
    return files


# -- training -------------------------------------------------------------------------------------
CONFIGS = REPO / "configs" / "demo"


def _yaml(value) -> str:
    """A value for a dotted override, quoted so that any path reads back as the same string."""
    return json.dumps(str(value))


def warm_start_config(plan: DemoPlan) -> AlignConfig:
    """``configs/demo/warm_start.yaml`` with the plan's step and time budget."""
    return settings.load(AlignConfig, CONFIGS / "warm_start.yaml",
                         [f"steps={plan.align_steps}", f"max_minutes={plan.align_minutes}"])


def stage_config(name: str, plan: DemoPlan, out: Path, sources: list[Path], minutes: float) -> TrainConfig:
    """``configs/demo/<name>.yaml`` with this run's model, paths and budget (``sources`` in the YAML's order)."""
    max_steps = plan.stage1_max_steps if name == "stage1" else plan.stage2_max_steps
    overrides = [f"model={_yaml(plan.model)}", f"output_dir={_yaml(out / name)}",
                 f"encoder_cache.dir={_yaml(out / 'encoder_cache')}", f"train.max_minutes={minutes}",
                 f"train.max_steps={'null' if max_steps is None else max_steps}", f"train.batch_size={plan.batch_size}"]
    overrides += [f"data.sources.{i}.path={_yaml(path)}" for i, path in enumerate(sources)]
    return load_config(CONFIGS / f"{name}.yaml", overrides)


def warm_start(model, processor, asr_train: Path, plan: DemoPlan, cache_dir: Path) -> list[float]:
    """Encode the training clips once (into stage 1's encoder cache) and run the CTC alignment."""
    states, frames, texts, _ = encode_clips(model, processor, asr_train, cache_dir)
    with torch.enable_grad():
        return ctc_align_adaptor(model, states, frames, texts, processor.tokenizer, warm_start_config(plan))


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    mode = os.environ.get("LLASM_DEMO", "starter")
    if mode not in PLANS:
        print(f"LLASM_DEMO must be one of {sorted(PLANS)}, got {mode!r}", file=sys.stderr)
        return 2
    plan = PLANS[mode]
    out = Path(os.environ.get("LLASM_DEMO_DIR", REPO / "outputs" / f"demo-{mode}"))
    clock = Clock()
    torch.manual_seed(0)
    print(f"llasm demo: mode={mode}, model={plan.model}, output={out}")
    stage1 = (f"what is left of {plan.budget_minutes:g} min after the warm start, less {plan.reserve_minutes:g} min "
              f"for stage 2 and the evaluation (>= {plan.stage1_minutes:g} min)" if plan.budget_minutes
              else f"<= {plan.stage1_minutes:g} min")
    print(f"budget: warm start <= {plan.align_minutes:g} min, stage 1 {stage1}, stage 2 <= {plan.stage2_minutes:g} min "
          "(training is bounded by wall time on this machine)")

    if plan.starter:
        with clock.step("starter models"):
            ensure_starter_models(list(plan.starter))
    with clock.step("speak the seed corpus (TTS)"):
        files = prepare_data(out / "data", plan)

    model, processor = build_model(REPO / plan.model)
    with clock.step("warm start: CTC alignment of the adaptor"):
        losses = warm_start(model, processor, files["asr_train"], plan, out / "encoder_cache")
        print(f"[align] ctc loss {losses[0]:.2f} -> {losses[-1]:.2f} in {len(losses)} steps")
    stage1_minutes = plan.stage1_budget(clock.elapsed())
    with clock.step(f"stage 1: ASR alignment (adaptor, {stage1_minutes:.1f} min)"):
        train(stage_config("stage1", plan, out, [files["asr_train"]], stage1_minutes), model=model,
              processor=processor)
    with clock.step("stage 2: spoken instructions (adaptor + LoRA)"):
        config = stage_config("stage2", plan, out, [files["instruct_train"], files["asr_train"]], plan.stage2_minutes)
        result = train(config, model=model, processor=processor)
    final = Path(result["final"]) if isinstance(result, dict) and result.get("final") else out / "stage2" / "final"
    with clock.step("evaluation (held-out seed items, llasm vs cascade)"):
        evaluate_main(["--model", str(final), "--data", str(files["instruct_test"]), "--asr-data", str(files["asr_test"]),
                       "--split", "all", "--limit", str(plan.eval_limit), "--asr-limit", str(plan.asr_eval_limit),
                       "--max-new-tokens", str(plan.max_new_tokens),
                       "--output", str(out / "eval"), "--no-progress"]
                      + (["--no-cascade"] if not plan.starter else []))
    with clock.step("two spoken questions"):
        answer_examples(final, files["instruct_test"])
    report = json.loads((out / "eval" / "report.json").read_text())
    print_goals(report, mode)
    print(f"\ntotal {clock.elapsed():.1f} min; steps: " + ", ".join(f"{n} {s:.0f}s" for n, s in clock.steps))
    print(f"report: {out / 'eval' / 'report.md'}  model: {final}")
    return 0


def answer_examples(final: Path, instruct_test: Path) -> None:
    model = LlasmForConditionalGeneration.from_pretrained(final)
    rows = read_jsonl(instruct_test)
    for lang in ("en", "zh"):
        row = next(r for r in rows if r["lang"] == lang)
        human = row["conversations"][0]
        reply = model.chat(audio=str(instruct_test.parent / row["audios"][0]), max_new_tokens=40)
        print(f"[{lang}] spoken question: {human.get('transcript', '')}\n[{lang}] llasm: {reply}")


GOALS = {("en", "wer"): 0.25, ("zh", "cer"): 0.35}


def print_goals(report: dict, mode: str) -> None:
    results = report.get("results", {})
    print("\ngoals on held-out seed items:")
    for (lang, metric), goal in GOALS.items():
        value = results.get("llasm", {}).get(lang, {}).get(metric)
        if value is None:
            print(f"  {lang} {metric.upper()}: not measured")
            continue
        verdict = "met" if value <= goal else f"MISSED by {100 * (value - goal):.1f} points"
        print(f"  {lang} {metric.upper()} {100 * value:.1f} % (goal <= {100 * goal:.0f} %): {verdict}")
    for lang in ("en", "zh"):
        llasm_acc = results.get("llasm", {}).get(lang, {}).get("accuracy")
        text_acc = results.get("text", {}).get(lang, {}).get("accuracy")
        if llasm_acc is not None and text_acc is not None:
            print(f"  {lang} spoken-question accuracy {100 * llasm_acc:.0f} % vs text-question {100 * text_acc:.0f} %")
    if mode == "tiny":
        print("  (tiny random model: the numbers only show the pipeline runs)")


if __name__ == "__main__":
    sys.exit(main())
