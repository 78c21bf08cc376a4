# The two commands of the README. Both create .venv if missing (or stale), then run.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

# The local environment (loopback only, offline), from the one file the jobs and the tests read too.
include jobs/local.env
export $(shell sed -n 's/^\([A-Z_][A-Z0-9_]*\)=.*/\1/p' jobs/local.env)
# DeepSpeed caches any compiled op here instead of rebuilding it every run.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions

.PHONY: demo test lint browser benchmark paper-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade-strategy only-if-needed -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.demo $(ARGS)

test: $(STAMP) browser lint
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The page test drives Debian's chromium + chromedriver, the SF2 export test renders through Debian's
# fluidsynth: installed here when missing and possible (root with apt-get, as on CI); otherwise those
# tests skip and say why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v fluidsynth >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fluidsynth >/dev/null; } || \
	  echo "chromium + chromedriver + fluidsynth not installed: the page and SF2 playback tests will skip"

benchmark: $(STAMP)
	$(PY) -m jobs.benchmark

# The real path at paper size on this CPU (docs/cluster.md): released-format weights, loopback S3,
# the manifests' own job arguments; prints time and peak memory per stage (~10 min on 2 cores).
paper-check: $(STAMP)
	$(PY) -m jobs.paper_check $(ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache demo-output
