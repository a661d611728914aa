"""Round trip of unit heads trained for equal minutes: one arm per set of overrides of the speech
demo's stage 3 (``configs/speech_demo/stage3.yaml``), each judged by Whisper on the held-out answers
of a speech demo, against the first arm in the same run.

    .venv/bin/python bench/unit_head.py --demo outputs/speech-demo --minutes 4 \\
        --arm "phonemes=" --arm "states=unit_head.input=states,objective.cache_states=true"

Each arm trains a fresh CTC unit head (the demo's reads phonemes; an arm may set ``unit_head.input=states``
for LLaMA-Omni's head on the LLM's states) on the frozen starter LLM (or ``--model``) with the demo's
``data/stage3_train.jsonl`` for ``--minutes`` of wall time, then answers the held-out questions with
``model.chat(speak=True)`` through the demo's ``token2wav``; Whisper (``--judge``) reads the speech and
is scored against the text the model wrote (``llasm.evaluation.speech``'s ``round_trip``): en WER /
zh CER, lower is better. The ratio column is each arm's error over the first arm's; the units per
answer token say how close a head is to speaking at all (the training answers hold ~9-12).

Every arm trains at the demo's precision for this machine first (bf16 autocast; fp32 on a CPU without native
bf16: ``speech_demo.head_precision``), then its own overrides (``train.mixed_precision=no`` for an fp32 arm).

``--keep DIR`` keeps each arm's last head as ``DIR/<arm name>`` (a checkpoint ``from_pretrained`` loads).

``--at 5,10,20`` judges each arm at those cumulative training minutes instead: one head trained on
(the same trainer, its state cache kept), judged between legs off the clock — the head's learning curve.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _arms import legs, minute_marks, parse_arms, ratio_cell  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGE3 = ROOT / "configs" / "speech_demo" / "stage3.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--demo", default=str(ROOT / "outputs" / "speech-demo"), help="a `make speech-demo` output folder")
    parser.add_argument("--model", default=str(ROOT / "configs" / "model" / "starter.yaml"),
                        help="the frozen model the heads are added to (a model YAML or a checkpoint)")
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=OVERRIDE[,OVERRIDE]",
                        help="one head to train: a name and dotted overrides of the stage-3 YAML (repeat; the first is the baseline)")
    parser.add_argument("--minutes", type=float, default=4.0,
                        help="wall-clock training minutes per arm; the YAML's max_steps (its lr decays over them) ends an "
                             "arm sooner when reached: add train.max_steps=null to an arm to train by minutes alone")
    parser.add_argument("--at", default=None, metavar="M1,M2,...",
                        help="judge each arm at these cumulative training minutes (a learning curve; replaces --minutes; "
                             "the YAML's max_steps ends it sooner unless an arm sets train.max_steps=null)")
    parser.add_argument("--limit", type=int, default=24, help="held-out answers per language")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="text tokens per reply")
    parser.add_argument("--judge", default=None, help="Whisper judge (None: the starter whisper-base)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the table here")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="keep each arm's last head as DIR/<arm name> (e.g. for bench/speech_latency.py --model)")
    args = parser.parse_args()

    import llasm
    from llasm.apps.speech_demo import head_precision
    from llasm.evaluation.speech import evaluate_speech, load_speech_items
    from llasm.evaluation.systems import WhisperTranscriber
    from llasm.io import llasm_home, read_jsonl, write_json
    from llasm.speech.token2wav import load_token2wav
    from llasm.training.config import load_config
    from llasm.training.trainer import Trainer

    torch.set_num_threads(args.threads)
    demo = Path(args.demo).resolve()
    data = demo / "data" / "stage3_train.jsonl"
    for path in (data, demo / "token2wav", demo / "data" / "answers.jsonl"):
        if not path.exists():
            parser.error(f"{path}: missing (run `make speech-demo` with LLASM_SPEECH_DIR={args.demo} first)")
    arms = parse_arms(args.arm)
    try:
        marks = minute_marks(args.at, args.minutes)
    except ValueError as error:
        parser.error(str(error))
    items, _ = load_speech_items(demo / "data" / "answers.jsonl", "test", args.limit)
    judge = WhisperTranscriber(args.judge or str(Path(llasm_home()) / "whisper-base"))
    token2wav = load_token2wav(demo / "token2wav")
    rows_trained = len(read_jsonl(data))
    machine = head_precision(load_config(STAGE3))  # as the demo: fp32 on a CPU without native bf16, before each arm's own
    print(f"{len(items)} held-out answers of {demo}; {rows_trained} training rows; judged at {marks} min per arm")
    rows = []
    for name, overrides in arms:
        with tempfile.TemporaryDirectory() as scratch:
            trainer, seconds = Trainer(load_config(STAGE3, [
                f"model={json.dumps(str(args.model))}", f"output_dir={json.dumps(scratch)}",
                f"data.sources.0.path={json.dumps(str(data))}", f"train.max_minutes={marks[0]}",
                # a learning curve's legs share one schedule: not one fitted to the first leg's minutes
                *machine, *(["train.fit_steps_to_minutes=false"] if len(marks) > 1 else []), *overrides])), 0.0
            for mark, leg in zip(marks, legs(marks)):
                trainer.cfg.train.max_minutes = leg  # fit() again continues this trainer mid-epoch
                started = time.monotonic()
                result = trainer.fit()
                seconds += time.monotonic() - started
                model = llasm.LlasmForConditionalGeneration.from_pretrained(result["final"]).eval()
                model.set_vocoder(token2wav)
                report = evaluate_speech(items, judge, model=model, max_new_tokens=args.max_new_tokens, progress=False)
                del model
                spoken = [r["round_trip"] for r in report["details"]["speech"] if "round_trip" in r]
                losses = [x for _, x in result.get("losses") or []]
                rows.append({"arm": name, "overrides": ",".join(overrides), "minutes": mark, "steps": len(losses),
                             "seconds": round(seconds),
                             "ctc_loss": [losses[0], sum(losses[-10:]) / len(losses[-10:])] if losses else None,
                             "round_trip": {lang: m.get("wer", m.get("cer"))
                                            for lang, m in report["results"].get("round_trip", {}).items()},
                             "silent_replies": sum(not r["judge"] for r in spoken), "replies": len(spoken),
                             "errors": len(report["errors"])})
                print(json.dumps(rows[-1]), flush=True)
            if args.keep:
                shutil.copytree(result["final"], Path(args.keep) / name, dirs_exist_ok=True)
                print(f"[{name}] head kept as {Path(args.keep) / name} (the training log's {scratch} is temporary)")
            else:
                print(f"[{name}] the training log's {scratch} is temporary, removed now (--keep DIR keeps each head)")
            del trainer
    base = {r["minutes"]: r for r in rows if r["arm"] == rows[0]["arm"]}
    print("\n| arm | minutes | steps | CTC loss first -> last 10 | round trip en WER | zh CER | silent replies "
          "| ratio to the first arm (en / zh) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        loss = f"{r['ctc_loss'][0]:.2f} -> {r['ctc_loss'][1]:.2f}" if r["ctc_loss"] else "-"
        cells = [f"{100 * r['round_trip'][lang]:.1f} %" if lang in r["round_trip"] else "-" for lang in ("en", "zh")]
        ratio = ratio_cell(r["round_trip"], base[r["minutes"]]["round_trip"])
        print(f"| {r['arm']} | {r['minutes']:g} | {r['steps']} | {loss} | " + " | ".join(cells)
              + f" | {r['silent_replies']} / {r['replies']} | {ratio} |")
    if args.json:
        write_json(args.json, rows)  # atomic; makes the folder


if __name__ == "__main__":
    main()
