"""Speech units: fit k-means on an encoder layer, annotate answer audio, build vocoder manifests.

    python data_prep/units.py fit --encoder openai/whisper-small --num-units 500 --input data/conv.jsonl --output units/km500
    python data_prep/units.py annotate --kmeans units/km500 --input data/conv.jsonl --output data/conv.units.jsonl
    python data_prep/units.py manifest --kmeans units/km500 --input wavs/ --output data/vocoder.jsonl

The logic lives in :mod:`llasm.speech.units`.
"""

import sys

from llasm.speech.units_cli import main

if __name__ == "__main__":
    sys.exit(main())
