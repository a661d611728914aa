"""Judge-scored tasks, each with the benchmark's own prompt (pinned by sha256) and sampling.

VoiceBench ``api_judge.py``: ``gpt-4o-mini``, system "You are a helpful assistant who tries to help
answer the user's question.", temperature 0.5, top_p 0.95, 3 samples. ``open`` (AlpacaEval,
CommonEval, WildVoice): mean of the 1-5 scores (``src/evaluator/open.py``; ``[[N]]`` read when the
reply is not a bare number). ``qa`` (SD-QA): majority of the three Yes/No (``src/evaluator/qa.py``;
its PEDANT score needs a classifier download and is not computed), in percent.

URO-Bench ``metrics/mark_gpt.py``: the same model and sampling, system "You are a helpful
assistant.". ``uro-open`` / ``uro-semi-open``: mean of the three scores x 20; ``uro-qa``: share of
"Yes" x 100; an empty answer scores 0. A failed judge request is an item error here and the item
is left out of the mean (URO-Bench scores it 0; VoiceBench stops).

The endpoint is any OpenAI-compatible ``/chat/completions`` server (the project's judge options
``--judge-url`` / ``--judge-model``); a server that returns fewer than 3 choices is asked again
until there are 3.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from typing import Sequence

from llasm.io import ASSETS

PROMPTS_DIR = ASSETS / "benchmarks"
# scorer -> (prompt file, sha256 of its bytes, system message)
VB_SYSTEM = "You are a helpful assistant who tries to help answer the user's question."
URO_SYSTEM = "You are a helpful assistant."
PROMPTS = {
    "open": ("voicebench_open.txt", "98f2e9919fbad61f1cab0c2492f53519412d97faeead126c756d73355552bd1e", VB_SYSTEM),
    "qa": ("voicebench_qa.txt", "b89c3ec54556c16e6a111586a215d8b9d2cbbbb2d334c2604d84f7102ec398b0", VB_SYSTEM),
    "uro-open": ("urobench_open.txt", "97c6bf5c15b11f10349b5c63e7e8cd7bf046152f121765c6ab6b6f444613b56b", URO_SYSTEM),
    "uro-semi-open": ("urobench_semi_open.txt", "6ddee56a331dbd3bcee2f9cbe14bc6d385058d99906aa88af29d28fb4692cb7d",
                      URO_SYSTEM),
    "uro-qa": ("urobench_qa.txt", "462c70ce4fc12249085b7e985e84cc71c31f8eeb224b704f33a515ab7cc9d86c", URO_SYSTEM),
}
SAMPLING = {"temperature": 0.5, "top_p": 0.95, "max_tokens": 1024, "frequency_penalty": 0, "presence_penalty": 0}
N_SAMPLES = 3
JUDGE_SCORERS = tuple(PROMPTS)


class JudgeError(RuntimeError):
    pass


def load_prompt(scorer: str) -> str:
    """The pinned prompt text of a judge scorer; raises ``JudgeError`` if the file's hash changed."""
    name, sha, _ = PROMPTS[scorer]
    data = (PROMPTS_DIR / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha:
        raise JudgeError(f"{PROMPTS_DIR / name}: sha256 differs from the pinned {sha}; "
                         "the benchmark's judge prompt must not change")
    return data.decode("utf-8")


def fill(scorer: str, question: str, answer: str, reference: str | None) -> str:
    """The judge prompt for one answer, filled with the benchmark's own chain of ``str.replace``."""
    text = load_prompt(scorer)
    if scorer in ("open", "qa"):
        text = text.replace("{prompt}", question)
        if scorer == "qa":
            text = text.replace("{reference}", reference or "")
        return text.replace("{response}", answer)
    text = text.replace("{question}", question).replace("{answer}", answer)
    return text.replace("{reference}", reference or "") if scorer != "uro-open" else text


class ChatJudge:
    """OpenAI-compatible chat completions (stdlib ``urllib``); ``url`` is the base or the full path.

    The API key, when needed, is read from the environment variable ``api_key_env``.
    """

    def __init__(self, url: str, model: str, api_key_env: str = "LLASM_JUDGE_API_KEY", timeout: float = 120.0):
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model, self.api_key_env, self.timeout = model, api_key_env, timeout

    def info(self) -> dict:
        return {"url": self.url, "model": self.model, "sampling": {**SAMPLING, "n": N_SAMPLES},
                "prompts_sha256": {k: v[1] for k, v in PROMPTS.items()}}

    def _request(self, messages: list[dict], n: int) -> list[str]:
        body = {"model": self.model, "messages": messages, "n": n, **SAMPLING}
        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = json.loads(response.read().decode("utf-8"))
            return [str(c["message"]["content"] or "").strip() for c in data["choices"]]
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as err:
            raise JudgeError(f"judge request to {self.url} failed: {err}") from err
        except (KeyError, TypeError) as err:
            raise JudgeError(f"judge reply is not OpenAI chat JSON: {str(data)[:200]}") from err

    def samples(self, scorer: str, prompt: str, n: int = N_SAMPLES) -> list[str]:
        """``n`` judge replies to ``prompt`` under the scorer's system message."""
        messages = [{"role": "system", "content": PROMPTS[scorer][2]}, {"role": "user", "content": prompt}]
        out: list[str] = []
        for _ in range(2 * n):  # a server that ignores ``n`` answers once per call
            out += self._request(messages, n - len(out))
            if len(out) >= n:
                return out[:n]
        raise JudgeError(f"judge at {self.url} returned {len(out)} of {n} replies")


def _rating(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        m = re.search(r"\[\[(\d+)\]\]", text)
        if not m:
            raise JudgeError(f"judge reply has no score: {text!r:.200}") from None
        return float(m.group(1))


def _uro_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise JudgeError(f"judge reply is not an integer score: {text!r:.200}") from None


def item_score(scorer: str, replies: Sequence[str], answer: str) -> float:
    """One item's score from the judge's replies, on the benchmark's own scale (module docstring)."""
    if scorer == "open":
        return sum(_rating(r) for r in replies) / len(replies)
    if scorer == "qa":
        votes = [r.lower() for r in replies]
        return 100.0 if max(set(votes), key=votes.count) == "yes" else 0.0
    if answer.strip() == "":
        return 0.0
    if scorer == "uro-qa":
        return 100 * sum(r == "Yes" for r in replies) / len(replies)
    return 20 * sum(_uro_int(r) for r in replies) / len(replies)


def score_with_judge(scorer: str, rows: Sequence[dict], judge: ChatJudge, errors: list[dict], system: str) -> dict:
    """Judge every row (``id``, ``prompt``, ``response``, ``reference``); a failed item is an error.

    Returns ``{metric: mean}`` (``gpt`` for VoiceBench, ``score`` for URO-Bench) over the judged rows.
    """
    scores = []
    for row in rows:
        try:
            replies = judge.samples(scorer, fill(scorer, row["prompt"], row["response"] or "", row.get("reference")))
            row["judge"] = replies
            row["score"] = item_score(scorer, replies, row["response"] or "")
            scores.append(row["score"])
        except JudgeError as err:
            errors.append({"task": row.get("group", scorer), "system": system, "id": row["id"], "error": str(err)})
    if not scores:
        return {}
    return {("gpt" if scorer in ("open", "qa") else "score"): sum(scores) / len(scores)}
