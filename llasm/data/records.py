"""Instruction data as it comes (Alpaca, ShareGPT, OpenAI-style messages, our JSONL) -> our rows.

Training reads every ``data.sources`` file through :func:`read_rows`, so a text-only instruction set
(an Alpaca or ShareGPT dump, a JSON list or JSONL) is a source as it is, mixed with spoken data by
weight; ``llasm synthesize`` reads the same files (:func:`read_records`) to speak them.

- Alpaca: ``instruction`` / ``input`` / ``output`` (+ ``system``) -> one human turn (the instruction,
  then the input after a blank line) and one gpt turn.
- ShareGPT: ``conversations`` of ``{"from", "value"}`` with ``human``/``user``/``gpt``/``assistant``/
  ``chatgpt``/``bard``/``model``/``system`` speakers -> the same turns (a ``system`` turn becomes the
  row's ``system``). Our own rows are ShareGPT rows with ``audios`` and ``<speech>`` marks.
- OpenAI-style ``messages`` of ``{"role", "content"}`` with string content -> the same turns.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

HUMAN_ROLES = {"human", "user"}
GPT_ROLES = {"gpt", "assistant", "chatgpt", "bard", "bing", "model"}


def read_records(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON list (Alpaca/ShareGPT dumps), a JSON object holding one (``data``, ``train``,
    ``items``) or a JSONL file. Raises ``ValueError`` naming the file (and line) when it is neither."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON list (line {err.lineno}: {err.msg})") from None
        if not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{path}: expected a JSON list of objects (records)")
        return data
    if stripped.startswith("{") and path.suffix == ".json":
        try:
            data = json.loads(text)
            for key in ("data", "train", "items"):
                if isinstance(data.get(key), list):
                    return data[key]
            return [data]
        except json.JSONDecodeError:
            pass  # a JSONL file named .json
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
    return rows


def detect_format(record: dict) -> str:
    """``sharegpt`` (also our JSONL and ``messages``), ``alpaca``, ``seed_instruction`` or ``seed_asr``."""
    if "conversations" in record or "messages" in record:
        return "sharegpt"
    if "instruction" in record:
        return "alpaca"
    if "question" in record and "answer" in record:
        return "seed_instruction"
    if "text" in record:
        return "seed_asr"
    raise ValueError(f"unrecognised record (keys {sorted(record)}); expected Alpaca, ShareGPT or seed fields")


def to_row(record: dict, default_id: str) -> dict:
    """One record (any format :func:`detect_format` knows, except the ASR-only seed sentences) as our
    row: ``id``, optional ``system`` / ``lang`` / ``audios``, and ``conversations`` of
    ``{"from": "human" | "gpt", "value"}`` (extra turn keys such as ``transcript`` and ``units`` kept).
    Raises ``ValueError`` for a record that is not a conversation."""
    if not isinstance(record, dict):
        raise ValueError(f"expected an object, got {type(record).__name__}")
    fmt = detect_format(record)
    row = {k: record[k] for k in ("id", "lang", "system", "audios") if record.get(k)}
    row.setdefault("id", default_id)
    if fmt == "alpaca":
        prompt = str(record.get("instruction") or "").strip()
        typed = str(record.get("input") or "").strip()
        turns = [{"from": "human", "value": f"{prompt}\n\n{typed}" if typed else prompt},
                 {"from": "gpt", "value": str(record.get("output") or "").strip()}]
    elif fmt == "seed_instruction":
        turns = [{"from": "human", "value": str(record["question"]).strip()},
                 {"from": "gpt", "value": str(record["answer"]).strip()}]
    elif fmt == "sharegpt":
        turns = []
        for turn in record.get("conversations") or record.get("messages") or []:
            role = str(turn.get("from") or turn.get("role") or "").lower()
            value = turn.get("value", turn.get("content"))
            if not isinstance(value, str):
                raise ValueError(f"turn {len(turns)}: content is not text ({type(value).__name__})")
            if role == "system":
                row.setdefault("system", value)
                continue
            if role not in HUMAN_ROLES | GPT_ROLES:
                raise ValueError(f"unknown speaker {role!r}")
            kept = {k: v for k, v in turn.items() if k not in ("from", "role", "value", "content")}
            turns.append({"from": "human" if role in HUMAN_ROLES else "gpt", "value": value, **kept})
    else:
        raise ValueError("a plain sentence (seed ASR text) is not a conversation: speak it with llasm synthesize")
    row["conversations"] = turns
    return row


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Every record of ``path`` as our row (:func:`to_row`); ids default to ``<file stem>-<index>``.
    A record that is not a conversation becomes ``{"id", "_error": reason}`` so the caller can
    reject it with its id instead of losing the file."""
    stem = Path(path).stem
    rows = []
    for index, record in enumerate(read_records(path)):
        default_id = f"{stem}-{index}"
        try:
            rows.append(to_row(record, default_id))
        except (ValueError, TypeError, AttributeError) as err:
            rows.append({"id": record.get("id", default_id) if isinstance(record, dict) else default_id,
                         "_error": str(err)})
    return rows
