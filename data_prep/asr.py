"""Build stage-1 ASR JSONL from LibriSpeech / AISHELL-1 / Common Voice / a TSV / a HF dataset.

    python data_prep/asr.py --format librispeech --input LibriSpeech/train-clean-100 --output data/libri.jsonl
    python data_prep/asr.py --help

The logic lives in :mod:`llasm.prep.asr`.
"""

import sys

from llasm.prep.asr import main

if __name__ == "__main__":
    sys.exit(main())
