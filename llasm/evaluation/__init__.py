"""Evaluation: ASR, spoken instruction following, modal invariance and speech output, each scored
side by side for llasm, a Whisper cascade and a text topline.

``eval/*.py`` and ``llasm eval`` call :func:`main`; :mod:`llasm.evaluation.run` holds the command
line, ``tasks`` runs the tasks, ``items`` reads the data, ``systems`` the systems and judge,
``report`` writes the report files, ``metrics`` the scores, ``speech`` the speech-output task.
The names below load on first use (PEP 562), so ``llasm eval --help`` starts without torch.
"""

import importlib

_MODULES = {
    "llasm.evaluation.items": ("AsrItem", "InstructItem", "load_asr_items", "load_instruct_items", "load_prompts",
                               "prompt_info"),
    "llasm.evaluation.report": ("plot_metrics", "render_markdown", "summary_tables", "write_report"),
    "llasm.evaluation.run": ("DEFAULT_ASR_DATA", "DEFAULT_DATA", "build_parser", "load_model", "main", "run"),
    "llasm.evaluation.tasks": ("TASKS", "TEXT_TASKS", "evaluate"),
    "llasm.evaluation.systems": ("CascadeSystem", "Judge", "JudgeError", "LlasmSystem", "WhisperTranscriber",
                                 "collapse_loops"),
}
_NAMES = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'llasm.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(_NAMES[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_NAMES))
