"""Evaluation: ASR, spoken instruction following, modal invariance and speech output, each scored
side by side for llasm, a Whisper cascade and a text topline.

``eval/*.py`` and ``llasm eval`` call :func:`main`; :mod:`llasm.evaluation.run` holds the command
line, ``tasks`` runs the tasks, ``items`` reads the data, ``systems`` the systems and judge,
``report`` writes the report files, ``metrics`` the scores, ``speech`` the speech-output task.
"""

from llasm.evaluation.items import AsrItem, InstructItem, load_asr_items, load_instruct_items, load_prompts, prompt_info
from llasm.evaluation.report import plot_metrics, render_markdown, summary_tables, write_report
from llasm.evaluation.run import DEFAULT_ASR_DATA, DEFAULT_DATA, build_parser, load_model, main, run
from llasm.evaluation.systems import CascadeSystem, Judge, JudgeError, LlasmSystem, WhisperTranscriber, collapse_loops
from llasm.evaluation.tasks import TASKS, TEXT_TASKS, evaluate

__all__ = ["AsrItem", "CascadeSystem", "DEFAULT_ASR_DATA", "DEFAULT_DATA", "InstructItem", "Judge", "JudgeError",
           "LlasmSystem", "TASKS", "TEXT_TASKS", "WhisperTranscriber", "build_parser", "collapse_loops", "evaluate",
           "load_asr_items", "load_instruct_items", "load_model", "load_prompts", "main", "plot_metrics", "prompt_info",
           "render_markdown", "run", "summary_tables", "write_report"]
