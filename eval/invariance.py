"""Modal invariance: spoken-form vs text-form replies (agreement, chrF) and reply perplexity.

    python eval/invariance.py --model CKPT_DIR_or_YAML --output runs/eval-invariance [--data JSONL] [--asr-data JSONL] [--limit N]

Thin wrapper over :func:`llasm.evaluation.main` (same options as ``eval/run_all.py``, tasks preset).
"""

from __future__ import annotations

import sys
from typing import Sequence

from llasm.evaluation import main as _main

TASKS = ("invariance",)


def main(argv: Sequence[str] | None = None, **kwargs) -> int:
    """``kwargs`` go to :func:`llasm.evaluation.main` (``model=``, ``transcriber=`` injection in tests)."""
    return _main(argv, prog="eval/invariance.py", default_tasks=TASKS, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
