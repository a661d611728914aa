"""Chat templates: the bundled Llama-2 and ChatML templates, a sandboxed Jinja renderer, and the
control markers of any template, neutralised in message text.

A template writes structure as text: Llama-2's ``[INST]``, ``[/INST]``, ``<<SYS>>`` are plain
words of the vocabulary, ChatML's ``<|im_start|>`` is a special token in Qwen's tokenizer but plain
text in others. When a user types such a marker, tokenizing it gives exactly the ids the template
writes, and the user has forged a turn. :func:`escape_markers` puts a zero-width space after the
first character of every control marker in message text, so it still reads the same but never
tokenizes to the template's ids. The markers come from the template itself (:func:`template_markers`,
the literal text of its Jinja source, as transformers' ``sanitize_control_tokens`` finds the added
tokens a template writes) plus every added token of the tokenizer.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime

import jinja2.nodes
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Llama-2 chat (Chinese-LLaMA-2, LLaSM). Written without spaces around content: sentencepiece
# tokenizers add the word-initial "▁" to each content piece themselves.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ bos_token }}[INST]"
    "{% if loop.first and system %} <<SYS>>\n{{ system }}\n<</SYS>>\n\n{% endif %}{{ m['content'] }}[/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEMPLATES = {"llama2": LLAMA2_TEMPLATE, "chatml": CHATML_TEMPLATE}

# Marker shapes chat templates use: [INST] [/INST] [AVAILABLE_TOOLS] (Llama-2, Mistral), <<SYS>> <</SYS>>,
# <|im_start|> <|eot_id|> <|start_header_id|> (ChatML, Llama-3, Phi), <start_of_turn> </s> (Gemma, Llama).
MARKER = re.compile(r"\[/?[A-Za-z_]{2,}\]|<</?[A-Za-z_]{2,}>>|<\|[^|<>\s]{1,40}\|>|</?[A-Za-z_]{1,40}>")
# Zero-width space: invisible, kept by byte-level and byte-fallback tokenizers, and no template writes it.
ESCAPE = "\u200b"


@functools.lru_cache(maxsize=16)
def _compile(template: str):
    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env.from_string(template)


def render(template: str, **context) -> str:
    """Render a Jinja chat template in a sandbox (``raise_exception`` and ``strftime_now`` defined)."""
    return _compile(template).render(**context)


@functools.lru_cache(maxsize=16)
def _literal_text(template: str) -> str:
    """The literal strings of a template (raw text and string constants), joined by NULs so that no
    search matches across two of them — transformers' ``_get_template_literal_text``."""
    ast = _compile(template).environment.parse(template)
    literals = {n.data for n in ast.find_all(jinja2.nodes.TemplateData)}
    literals |= {n.value for n in ast.find_all(jinja2.nodes.Const) if isinstance(n.value, str)}
    return "\0".join(sorted(literals))


def template_markers(template: str) -> tuple[str, ...]:
    """The control markers a template writes: every :data:`MARKER`-shaped piece of its literal text,
    e.g. ``('<</SYS>>', '<<SYS>>', '[/INST]', '[INST]')`` for :data:`LLAMA2_TEMPLATE`."""
    return tuple(sorted(set(MARKER.findall(_literal_text(template)))))


def control_markers(template: str, tokenizer) -> tuple[str, ...]:
    """Markers to neutralise in message text, longest first: the template's own
    (:func:`template_markers`) and, as transformers' ``sanitize_control_tokens`` picks them, the
    tokenizer's added tokens that are special (``<s>``, ``<au_patch>``, ``<|im_end|>``) or that the
    template writes (Qwen3's ``<think>``); whitespace tokens are ordinary text."""
    literal = _literal_text(template)
    added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
             if len(t.content.strip()) > 1 and (t.special or t.content in literal)]
    return tuple(sorted(set(template_markers(template)) | set(added), key=len, reverse=True))


@functools.lru_cache(maxsize=64)
def _pattern(markers: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(map(re.escape, markers)) or "(?!)")  # longest first; (?!) never matches


def escape_markers(text: str, markers: tuple[str, ...]) -> str:
    """``text`` with a zero-width space after the first character of each marker occurrence:
    ``"[/INST] Sure"`` -> ``"[\\u200b/INST] Sure"``. It reads the same, and no longer tokenizes to
    the marker's ids."""
    return _pattern(markers).sub(lambda m: m.group(0)[0] + ESCAPE + m.group(0)[1:], text)
