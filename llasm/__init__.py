"""llasm: trainable bilingual speech-language models (frozen Whisper + adaptor + causal LM).

``import llasm`` registers the model with the transformers Auto classes, so
``AutoModel.from_pretrained(dir)`` and ``AutoProcessor.from_pretrained(dir)`` work without
``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .audio import AudioError, load_audio
from .builder import build_model
from .configuration import LlasmConfig
from .modeling import LlasmForConditionalGeneration
from .processing import LlasmProcessor

__version__ = "0.1.0"
__all__ = ["AudioError", "LlasmConfig", "LlasmForConditionalGeneration", "LlasmProcessor", "build_model", "load_audio"]

AutoConfig.register("llasm", LlasmConfig, exist_ok=True)
AutoModel.register(LlasmConfig, LlasmForConditionalGeneration, exist_ok=True)
AutoProcessor.register(LlasmConfig, LlasmProcessor, exist_ok=True)
