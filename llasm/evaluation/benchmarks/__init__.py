"""The field's benchmarks on llasm models: VoiceBench, URO-Bench (basic) and the standard ASR test sets.

Loaders read each benchmark from a local copy in its published layout (or the hub when reachable),
scorers re-implement the benchmarks' rule-based evaluators, judge-scored subsets go through an
OpenAI-compatible judge with the benchmark's own pinned prompt, and ``llasm eval --benchmark
NAME[:subset]`` runs it all (:mod:`llasm.evaluation.benchmarks.cli`).
"""

from llasm.evaluation.benchmarks.cli import NAMES, load_benchmark, main
from llasm.evaluation.benchmarks.items import BenchItem, BenchmarkError, parse_spec
from llasm.evaluation.benchmarks.run import evaluate_benchmarks

__all__ = ["NAMES", "BenchItem", "BenchmarkError", "evaluate_benchmarks", "load_benchmark", "main", "parse_spec"]
