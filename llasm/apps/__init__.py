"""What a user runs: ``llasm chat`` (``chat_cli``), ``llasm serve`` (``serve``), ``llasm export``,
``make demo`` (``demo``) and ``make speech-demo`` (``speech_demo``). Apps may read the repository
checkout (``configs/``, ``data/seed/``); the library below them does not need to.
"""
