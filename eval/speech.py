"""Speech output: a Whisper judge (the starter Whisper base by default) transcribes speech -> WER/CER.

    python eval/speech.py --model STAGE3_DIR --vocoder VOCODER_DIR --kmeans KMEANS_DIR \
        --data conversations_with_spoken_answers.jsonl --output runs/eval_speech [--judge WHISPER_DIR] [--limit N]

Systems (see :mod:`llasm.evaluation.speech`): ``speech_source`` (the judge on the reference answer audio),
``speech_resynthesis`` (its units -> vocoder -> judge, vs the answer text) and ``speech_round_trip``
(``model.chat(question, speak=True)``; the judge's transcript of the speech vs the text the model
wrote). ``eval/run_all.py ... --vocoder DIR`` adds the same columns to the full report.
"""

from __future__ import annotations

import sys
from typing import Sequence

from llasm.evaluation import main as _main

TASKS = ("speech",)


def main(argv: Sequence[str] | None = None, **kwargs) -> int:
    return _main(argv, prog="eval/speech.py", default_tasks=TASKS, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
