# Set-up and entry points. `make demo` and `make test` build the virtual environment first.

PYTHON ?= python3
VENV := .venv

.PHONY: demo test test-fast test-engines test-browser

# The CPU torch goes in first (it is on local disk here): installing lightning into an environment
# without torch would pull a multi-GB CUDA build.
$(VENV)/installed: setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install torch==2.13.0
	$(VENV)/bin/pip install -e ".[dev]"
	# DeepSpeed's CPU communication op, JIT-compiled once (about 2 minutes) into TORCH_EXTENSIONS_DIR
	$(VENV)/bin/python -c "from oneforcing.engines.deepspeed import build_communication_op as b; b()"
	touch $@

demo: $(VENV)/installed
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

# The default suite (about 5 min on 2 cores); the 2-process engine tests (about 20 min) are `make test-engines`.
test: $(VENV)/installed
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not engines and not browser"

# The fast tier while editing (about 2 min on 2 cores): no subprocess, no multi-step training.
test-fast: $(VENV)/installed
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not slow and not engines and not browser"

test-engines: $(VENV)/installed
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -m engines

# The live page in headless Chromium (Debian's package `chromium`; .ci/run installs it).
test-browser: $(VENV)/installed
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -m browser
