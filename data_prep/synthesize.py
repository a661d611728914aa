"""Turn text instruction data (Alpaca, ShareGPT, our JSONL, data/seed/*.jsonl) into spoken conversations.

    python data_prep/synthesize.py --input data/seed/instructions.jsonl --output data/spoken/seed.jsonl --workers 4
    python data_prep/synthesize.py --help

Resumable: rerun the same command after a crash. The logic lives in :mod:`llasm.prep.synthesize`.
"""

import sys

from llasm.prep.synthesize import main

if __name__ == "__main__":
    sys.exit(main())
