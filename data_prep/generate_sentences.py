"""Regenerate `data/seed/generated_sentences.jsonl`: everyday sentences written by the starter LLM.

    pip install wordfreq==3.1.1 && python data_prep/generate_sentences.py   # ~14 min on 2 CPU cores
    python data_prep/generate_sentences.py --help

The logic lives in :mod:`llasm.prep.sentences`.
"""

import sys

from llasm.prep.sentences import main

if __name__ == "__main__":
    sys.exit(main())
