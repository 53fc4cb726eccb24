# `make demo` and `make test` work on a fresh machine: each creates .venv with pip when missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint bench clean-venv browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# The GE2E speaker encoder's weights (--backbone ge2e) ship in resemblyzer; --no-deps because its
	# declared webrtcvad builds from source (webrtcvad-wheels, a dependency above, is the same module).
	$(BIN)/python -m pip install --quiet --no-deps "resemblyzer==0.1.4"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/graft demo

# tests/test_report_browser.py opens report.html in a real headless Chromium (Debian's package):
# installed here when missing, so `make test` alone sets up everything the tests need.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (for tests/test_report_browser.py)"; \
		SUDO=""; if [ "$$(id -u)" != 0 ]; then SUDO="sudo -n"; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "make test needs Chromium for tests/test_report_browser.py: install it (Debian: apt-get install chromium)"; \
		exit 1; \
	fi

test: $(STAMP) browser
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/feature_cache.py
	$(BIN)/python benchmarks/streaming_memory.py
	$(BIN)/python benchmarks/overhead.py

clean-venv:
	rm -rf $(VENV)
