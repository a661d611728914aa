"""GPU smoke test: every training stage under every launcher for a few steps, then chat, eval and a resume.

    python bench/gpu_smoke.py                      # all GPUs of this machine; tiny model, bf16 + sdpa
    python bench/gpu_smoke.py --model starter      # the bilingual starter model (make starter first)
    python bench/gpu_smoke.py --cpu                # the same runs on CPU processes (gloo): a dry run
    python bench/gpu_smoke.py --only stage1,stage2-lora --launchers single,zero3

Runs stage 1 (adaptor), stage 2 (LoRA and full) and stage 3 (unit head) on one GPU (``single``)
and on all GPUs under ``torchrun`` (DDP), DeepSpeed ZeRO-2 and ZeRO-3 (``torchrun`` + the JSONs in
configs/deepspeed/), each for ``--steps`` steps, bf16 and sdpa attention; then ``llasm chat`` and
``llasm eval`` on a trained checkpoint and a stopped-and-resumed run. Prints a pass/fail table with
seconds per step and rank 0's peak GPU memory, and writes it to ``OUT/gpu_smoke.md`` (+ ``.json``).
The tiny model's bases are written as HF directories first, so ZeRO-3 starts from a model YAML as a
real run does; the data are synthetic tones. Exit status: 0 all passed, 1 some failed, 2 no GPU
(without ``--cpu``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("stage1", "stage2-lora", "stage2-full", "stage3")
LAUNCHERS = ("single", "torchrun", "zero2", "zero3")
SR = 16_000


def tone(seconds: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * np.sin(2 * np.pi * (200 + 30 * seed) * t) + 0.05 * noise).astype(np.float32)


def write_data(root: Path, rows: int = 16) -> Path:
    """ASR rows of tones (with units on the answers for stage 3) and a text-only row."""
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(rows):
        sf.write(root / "wavs" / f"{i}.wav", tone(0.5 + 0.2 * (i % 6), i), SR)
        out.append({"id": f"asr-{i}", "lang": "en", "audios": [f"wavs/{i}.wav"],
                    "conversations": [{"from": "human", "value": "<speech>\nTranscribe the audio."},
                                      {"from": "gpt", "value": f"hello number {i}",
                                       "units": [(3 * i + j) % 12 for j in range(5)]}]})
    out.append({"id": "text-0", "lang": "en", "audios": [],
                "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello", "units": [1, 2]}]})
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def tiny_model_yaml(root: Path, dtype: str) -> Path:
    """configs/model/tiny.yaml with its Whisper and Llama saved as HF dirs (what ZeRO-3 loads partitioned)."""
    from transformers import (
        AutoConfig,
        LlamaForCausalLM,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    from llasm.builder import TINY_TOKENIZER, load_tokenizer
    from llasm.io import load_yaml

    spec = load_yaml(ROOT / "configs" / "model" / "tiny.yaml")
    if not (root / "llama" / "config.json").exists():
        torch.manual_seed(0)
        WhisperForConditionalGeneration(WhisperConfig(**spec["audio"]["config"])).save_pretrained(root / "whisper")
        WhisperFeatureExtractor(feature_size=80).save_pretrained(root / "whisper")
        LlamaForCausalLM(AutoConfig.for_model(**spec["text"]["config"])).save_pretrained(root / "llama")
        load_tokenizer(TINY_TOKENIZER).save_pretrained(root / "llama")
    spec["audio"] = {"name_or_path": str(root / "whisper"), "source": "whisper_encoder"}
    spec["text"] = {"name_or_path": str(root / "llama")}
    spec.update(dtype=dtype, attn_implementation="sdpa")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def stage_overrides(stage: str) -> list[str]:
    lora = ["trainable.language_model=lora", "lora.r=4", "lora.alpha=8", "lora.dropout=0.0"]
    return {
        "stage1": [],
        "stage2-lora": lora,
        "stage2-full": ["trainable.language_model=full"],
        "stage3": ["trainable.adaptor=frozen", "trainable.unit_head=full", "objective.type=units",
                   "unit_head.num_units=12", "unit_head.upsample_factor=2", "unit_head.hidden_size=32",
                   "unit_head.num_layers=1", "unit_head.num_heads=2", "unit_head.intermediate_size=64"],
    }[stage]


class Smoke:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.cpu = args.cpu
        self.gpus = 0 if args.cpu else torch.cuda.device_count()
        self.nproc = 2 if args.cpu else (self.gpus if args.gpus == "all" else int(args.gpus))
        self.rows: list[dict] = []
        self.env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                    "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}

    def prepare(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.data = write_data(self.out / "data")
        dtype = "float32" if self.cpu else "bfloat16"
        if self.args.model == "tiny":
            self.model = tiny_model_yaml(self.out / "bases", dtype)
        else:
            self.model = self.out / "starter.yaml"
            spec = yaml.safe_load((ROOT / "configs" / "model" / "starter.yaml").read_text())
            self.model.write_text(yaml.safe_dump({**spec, "dtype": dtype, "attn_implementation": "sdpa"}))
        self.base = self.out / "base.yaml"  # a stage YAML: what the runs share
        self.base.write_text(yaml.safe_dump({
            "seed": 0, "data": {"sources": [{"path": str(self.data)}], "group_size": 2, "num_workers": 0},
            "encoder_cache": {"enabled": True, "dir": str(self.out / "encoder_cache")},
            "train": {"batch_size": 2, "lr": 1e-4, "save_every": 1000, "scheduler": "constant"}}))

    def train_command(self, launcher: str, run: Path, stage: str, extra: list[str]) -> list[str]:
        overrides = [f"model={self.model}", f"output_dir={run}", f"train.max_steps={self.args.steps}",
                     f"device={'cpu' if self.cpu else 'cuda'}",
                     f"train.mixed_precision={'no' if self.cpu else 'bf16'}", *stage_overrides(stage), *extra]
        if launcher in ("zero2", "zero3"):
            overrides.append(f"deepspeed={ROOT / 'configs' / 'deepspeed' / (launcher + '.json')}")
        train = [str(ROOT / "train" / "train.py"), str(self.base), *overrides]
        if launcher == "single":
            return [sys.executable, *train]
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(self.nproc),
                "--master_port", str(29600 + len(self.rows)), *train]

    def record(self, name: str, launcher: str, processes: int, command: list[str], run: Path | None = None,
               check=None) -> bool:
        started = time.time()
        try:
            proc = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=self.args.timeout)
            ok, log = proc.returncode == 0, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            ok, log = False, f"timed out after {self.args.timeout} s\n{err.stdout or ''}{err.stderr or ''}"
        summary = {}
        if run is not None and (run / "train_summary.json").exists():
            summary = json.loads((run / "train_summary.json").read_text())
        note = ""
        if ok and check is not None:
            note = check(log, summary) or ""
            ok = not note
        if not ok and not note:
            note = (log.strip().splitlines() or ["(no output)"])[-1][:100]
        self.rows.append({"name": name, "launcher": launcher, "processes": processes, "ok": ok,
                          "s_per_step": summary.get("seconds_per_step"), "peak_gib": summary.get("peak_memory_gib"),
                          "wall_s": round(time.time() - started, 1), "note": note})
        (self.out / "logs").mkdir(exist_ok=True)
        (self.out / "logs" / f"{name}-{launcher}.log").write_text(log)
        print(f"  {'PASS' if ok else 'FAIL'}  {name:<12} {launcher:<9} {time.time() - started:6.1f} s  {note}", flush=True)
        return ok

    def run(self) -> int:
        self.prepare()
        finals: dict[str, Path] = {}
        for stage in self.args.only:
            for launcher in self.args.launchers:
                run = self.out / "runs" / f"{stage}-{launcher}"
                processes = 1 if launcher == "single" else self.nproc
                if self.record(stage, launcher, processes, self.train_command(launcher, run, stage, ["resume=none"]),
                               run, check=finite_losses):
                    finals.setdefault(stage, run / "final")
        final = finals.get("stage2-lora") or finals.get("stage1") or next(iter(finals.values()), None)
        device = "cpu" if self.cpu else "cuda"
        if final is not None:
            self.record("chat", "single", 1, [sys.executable, "-m", "llasm.cli", "chat", "--model", str(final),
                                              "--audio", str(self.out / "data" / "wavs" / "0.wav"),
                                              "--max-new-tokens", "8", "--device", device])
            self.record("eval", "single", 1, [sys.executable, "-m", "llasm.cli", "eval", "--model", str(final),
                                              "--asr-data", str(self.data), "--split", "all", "--tasks", "asr",
                                              "--limit", "6", "--no-cascade", "--no-progress", "--device", device,
                                              "--output", str(self.out / "eval")])
        self.resume()
        return self.report()

    def resume(self) -> None:
        """A 3-step run (checkpoints at 2 and at its last step, 3), then run on to 4 steps from checkpoint-3."""
        launcher = self.args.launchers[-1]
        run = self.out / "runs" / f"resume-{launcher}"
        first = self.train_command(launcher, run, "stage1", ["resume=none", "train.max_steps=3", "train.save_every=2"])
        processes = 1 if launcher == "single" else self.nproc
        if not self.record("resume-a", launcher, processes, first, run, check=finite_losses):
            return
        again = self.train_command(launcher, run, "stage1", ["resume=auto", "train.max_steps=4", "train.save_every=2"])

        def resumed(log, summary):
            if not str(summary.get("resumed_from") or "").endswith("checkpoint-3") or summary.get("steps") != 4:
                return f"did not resume from checkpoint-3 (summary: {summary})"
            return finite_losses(log, summary)

        self.record("resume-b", launcher, processes, again, run, check=resumed)

    def report(self) -> int:
        where = "CPU processes (gloo), --cpu dry run" if self.cpu else f"{self.gpus} x {torch.cuda.get_device_name(0)}"
        lines = [f"GPU smoke test: {where}; model {self.args.model}, {self.args.steps} steps per run, "
                 f"{'float32' if self.cpu else 'bf16'} + sdpa; {time.strftime('%Y-%m-%d %H:%M')}", "",
                 "| run | launcher | processes | result | s/step | peak GPU GiB (rank 0) | note |",
                 "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            step = f"{r['s_per_step']:.2f}" if r["s_per_step"] is not None else "-"
            peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
            lines.append(f"| {r['name']} | {r['launcher']} | {r['processes']} | {'pass' if r['ok'] else 'FAIL'} | "
                         f"{step} | {peak} | {r['note'].replace('|', '/')} |")
        failed = sum(not r["ok"] for r in self.rows)
        lines += ["", f"{len(self.rows) - failed} passed, {failed} failed"]
        table = "\n".join(lines)
        print("\n" + table)
        (self.out / "gpu_smoke.md").write_text(table + "\n")
        (self.out / "gpu_smoke.json").write_text(json.dumps(self.rows, indent=1))
        return 1 if failed else 0


def finite_losses(log: str, summary: dict) -> str | None:
    if not summary:
        return "no train_summary.json"
    return None if summary.get("steps") else "no steps"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/gpu_smoke.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="dry run on CPU processes (gloo) instead of GPUs")
    p.add_argument("--gpus", default="all", help="processes for the multi-GPU launchers (default: all GPUs)")
    p.add_argument("--model", choices=["tiny", "starter"], default="tiny")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--only", default=",".join(STAGES), help=f"stages, of {','.join(STAGES)}")
    p.add_argument("--launchers", default=",".join(LAUNCHERS), help=f"of {','.join(LAUNCHERS)}")
    p.add_argument("--timeout", type=float, default=900, help="seconds per run")
    p.add_argument("--out", default="runs/gpu_smoke")
    args = p.parse_args(argv)
    args.only, args.launchers = args.only.split(","), args.launchers.split(",")
    bad = sorted(set(args.only) - set(STAGES)) + sorted(set(args.launchers) - set(LAUNCHERS))
    if bad:
        p.error(f"unknown stage(s) or launcher(s): {bad}")
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing was tested.\n"
              "Run it on a GPU machine, or `python bench/gpu_smoke.py --cpu` for a dry run of the same runs on CPU "
              "processes.", file=sys.stderr)
        return 2
    return Smoke(args).run()


if __name__ == "__main__":
    sys.exit(main())
