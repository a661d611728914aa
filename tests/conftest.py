"""Shared fixtures: the tiny random model (built in code, offline) and synthetic audio."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "configs" / "model" / "tiny.yaml"
SR = 16_000

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


def tone(seconds: float, seed: int = 0, freq: float = 220.0) -> np.ndarray:
    """A deterministic speech-like test signal: a tone with noise, 16 kHz float32."""
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="session")
def tiny():
    """(model, processor) of configs/model/tiny.yaml, in eval mode."""
    import llasm

    model, processor = llasm.build_model(TINY_YAML)
    model.eval()
    return model, processor


def build_tiny(**overrides):
    import llasm
    from llasm import settings
    from llasm.io import load_yaml

    spec = load_yaml(TINY_YAML)
    for key, value in overrides.items():  # dotted keys: "adaptor.type"
        settings.set_dotted(spec, key, value)
    model, processor = llasm.build_model(spec)
    return model.eval(), processor


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory):
    """The tiny model's Whisper and Llama saved as HF dirs, so partial checkpoints can find them."""
    from transformers import LlamaForCausalLM, WhisperConfig, WhisperForConditionalGeneration

    from llasm.builder import TINY_TOKENIZER, load_tokenizer
    from llasm.io import load_yaml

    spec = load_yaml(TINY_YAML)
    root = tmp_path_factory.mktemp("bases")
    torch.manual_seed(0)
    whisper = WhisperForConditionalGeneration(WhisperConfig(**spec["audio"]["config"]))
    whisper.save_pretrained(root / "whisper")
    from transformers import WhisperFeatureExtractor

    WhisperFeatureExtractor(feature_size=80).save_pretrained(root / "whisper")
    from transformers import AutoConfig

    llama = LlamaForCausalLM(AutoConfig.for_model(**spec["text"]["config"]))
    llama.save_pretrained(root / "llama")
    load_tokenizer(TINY_TOKENIZER).save_pretrained(root / "llama")
    spec["audio"] = {"name_or_path": str(root / "whisper"), "source": "whisper_encoder"}
    spec["text"] = {"name_or_path": str(root / "llama")}
    return spec


TOKEN2WAV_KINDS = ("unit_hifigan", "unit_mel")


def tiny_token2wav(kind: str, num_units: int = 20, seed: int = 0):
    """A random token2wav of either kind, small enough for tests: a unit HiFi-GAN, or a units -> mel
    decoder spoken by Griffin-Lim (2 iterations: no weights needed)."""
    from llasm.speech.mel_decoder import UnitMelDecoder, UnitMelDecoderConfig
    from llasm.speech.token2wav import Token2WavConfig, UnitMelToken2Wav
    from llasm.speech.vocoder import UnitHifiGan
    from llasm.speech.vocoder_config import UnitVocoderConfig

    torch.manual_seed(seed)
    if kind == "unit_hifigan":
        return UnitHifiGan(UnitVocoderConfig(num_units=num_units, upsample_initial_channel=32, resblock_kernel_sizes=[3],
                                             resblock_dilation_sizes=[[1]], embedding_dim=8)).eval()
    decoder = UnitMelDecoder(UnitMelDecoderConfig(num_units=num_units, hidden_size=16, encoder_layers=1,
                                                  decoder_layers=1, kernel_size=3))
    return UnitMelToken2Wav(decoder, Token2WavConfig(mel_vocoder="griffin_lim", griffin_lim_iterations=2))
