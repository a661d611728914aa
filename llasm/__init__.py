"""llasm: trainable bilingual speech-language models (frozen Whisper + adaptor + causal LM).

``import llasm`` registers the model with the transformers Auto classes, so
``AutoModel.from_pretrained(dir)`` and ``AutoProcessor.from_pretrained(dir)`` work without
``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModel, AutoProcessor

from llasm.audio import AudioError, load_audio
from llasm.builder import build_model, load_model
from llasm.configuration import LlasmConfig
from llasm.modeling import LlasmForConditionalGeneration
from llasm.processing import LlasmProcessor

__version__ = "0.1.0"
__all__ = ["AudioError", "LlasmConfig", "LlasmForConditionalGeneration", "LlasmProcessor", "build_model", "load_audio", "load_model"]

AutoConfig.register("llasm", LlasmConfig, exist_ok=True)
AutoModel.register(LlasmConfig, LlasmForConditionalGeneration, exist_ok=True)
AutoProcessor.register(LlasmConfig, LlasmProcessor, exist_ok=True)
