"""One command for the whole evaluation: ASR, spoken instruction following, modal invariance,
llasm vs the Whisper -> LLM cascade side by side (and, with --vocoder, the speech-output task of
eval/speech.py); writes report.json, report.md and report.png.

    python eval/run_all.py --model CKPT_DIR_or_YAML --output runs/eval \
        [--data JSONL] [--asr-data JSONL] [--limit N] [--max-new-tokens 128] \
        [--judge-url http://host:8000/v1 --judge-model NAME] [--no-cascade] [--cascade-whisper DIR]

Thin wrapper over :func:`llasm.evaluation.main` (``llasm eval`` runs the same function).
"""

from __future__ import annotations

import sys
from typing import Sequence

from llasm.evaluation import TEXT_TASKS
from llasm.evaluation import main as _main


def main(argv: Sequence[str] | None = None, **kwargs) -> int:
    """``kwargs`` go to :func:`llasm.evaluation.main` (``model=``, ``transcriber=`` injection in tests)."""
    return _main(argv, prog="eval/run_all.py", default_tasks=TEXT_TASKS, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
