# Two entry points for a fresh Debian / Raspberry Pi OS machine: `make demo` and `make test`.
# Each makes .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# pytest-xdist workers for `make test`; each has its own PulseAudio and PostgreSQL.
TEST_JOBS ?= 4

# The demo runs on WAV files and the built-in simulator: only a venv is needed.
# espeak-ng makes the child's voice and the toy's; without it both are tones.
DEMO_APT := python3-venv
# The tests drive real PortAudio through a private PulseAudio server, real speech from espeak-ng,
# and build systemd-python.
TEST_APT := python3-venv libportaudio2 espeak-ng sox pulseaudio pulseaudio-utils libasound2-plugins \
	libsystemd-dev pkg-config gcc python3-dev systemd chromium postgresql shellcheck \
	faketime iproute2

.PHONY: demo test bench soak soak-live soak-audio clean
# `make soak`: minutes of chaos for the real daemon (SOAK_MINUTES=240 for hours; SOAK_SEED=N
# repeats a run's faults).
SOAK_MINUTES ?= 30

$(VENV)/.demo: pyproject.toml
	@./scripts/need-apt $(DEMO_APT)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	@touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.demo
	@./scripts/need-apt $(TEST_APT)
	$(PY) -m pip install -q -e '.[test,systemd]'
	@touch $@

demo: $(VENV)/.demo
	$(PY) -m device demo

test: $(VENV)/.test
	$(PY) -m pytest -q -n $(TEST_JOBS)

# Latency, cost and footprint against a quickstart-style baseline: one table and
# bench/results.json. BENCH_CONVERSATIONS (default 20) and BENCH_SOAK_S (default 120; 1800 for
# the 30-minute figure) set the length.
bench: $(VENV)/.test
	$(PY) bench/run.py

# The real daemon under random faults (Live, audio devices, history server, full disk, clock
# jumps) while a child talks; its last stdout line is a JSON summary. Needs root or user
# namespaces (it mounts a small tmpfs in its own mount namespace) and libfaketime.
soak: $(VENV)/.test
	SOAK_MINUTES=$(SOAK_MINUTES) $(PY) -m tests.soak_box

# A 30-minute conversation (faster than real time) switched by goAway every turn.
soak-live: $(VENV)/.test
	$(PY) -m pytest -q -s -m soak tests/test_live_soak.py

# Ten minutes of simulated talk through PortAudio into PulseAudio: zero underruns, barge-ins
# silent within 50 ms; prints memory by minute and the load (TALKIE_SOAK_S=N for another length).
soak-audio: $(VENV)/.test
	$(PY) -m pytest -q -s -m soak tests/test_audio_soak.py

clean:
	rm -rf $(VENV) build *.egg-info
