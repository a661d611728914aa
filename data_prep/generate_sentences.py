"""Regenerate `data/seed/generated_sentences.jsonl`: everyday sentences written by the starter LLM.

    pip install wordfreq==3.1.1 && python data_prep/generate_sentences.py   # ~14 min on 2 CPU cores
    python data_prep/generate_sentences.py --help

The logic lives in :mod:`llasm.data.sentences`.
"""

import sys

from llasm.data.sentences import main

if __name__ == "__main__":
    sys.exit(main())
