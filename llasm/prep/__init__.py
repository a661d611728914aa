"""Offline corpus preparation: ASR corpora to JSONL (``asr``), text instructions to spoken
conversations through TTS (``synthesize``, ``tts``), ASR instruction pools (``prompts``) and
LLM-written sentences (``sentences``). ``data_prep/*.py`` are the scripts around them.
"""
