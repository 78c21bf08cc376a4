# The two commands of the README. Both create .venv if missing (or stale), then run.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

# Everything local stays on loopback: Ray's own traffic, Train's gloo, Serve.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export GLOO_SOCKET_IFNAME := lo
export RAY_USAGE_STATS_ENABLED := 0
# No hub calls on machines without internet (transformers/laion_clap would hang on import).
export HF_HUB_OFFLINE := 1
# DeepSpeed caches any compiled op here instead of rebuilding it every run.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions

.PHONY: demo test benchmark clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade-strategy only-if-needed -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.demo

test: $(STAMP)
	$(PY) -m pytest

benchmark: $(STAMP)
	$(PY) -m jobs.benchmark

clean:
	rm -rf $(VENV) .cache .pytest_cache demo-output
