# Two commands on a fresh machine with Python 3.11:  make demo  |  make test
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Metaflow refuses to run as root without a user name (CI containers).
export METAFLOW_USER ?= $(if $(filter root,$(shell id -un)),demo,$(shell id -un))

.PHONY: demo test lint docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: setup.py | $(BIN)/python
	$(BIN)/pip install -q -e ".[torch,s3]"
	touch $@

# The checkpoint card's test renders it in headless Chromium (Debian's package).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Azurite (Azure Storage emulator, npm) pinned by tests/emulators/package-lock.json, in the venv.
$(VENV)/.test-installed: setup.py tests/emulators/package-lock.json $(VENV)/.installed
	$(BIN)/pip install -q -e ".[torch,s3,test]"
	mkdir -p $(VENV)/emulators && cp tests/emulators/package.json tests/emulators/package-lock.json $(VENV)/emulators/
	npm ci --prefix $(VENV)/emulators --no-audit --no-fund --loglevel=error
	command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }
	touch $@

demo: $(VENV)/.installed  ## train a tiny model that crashes once and resumes from its checkpoint
	$(BIN)/python examples/run_demo.py

test: $(VENV)/.test-installed  ## lint + the whole test suite (starts its own local S3 server)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 -q tests

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: $(VENV)/.test-installed  ## build the mkdocs site strictly (broken links fail)
	$(BIN)/mkdocs build --strict -d site

bench: $(VENV)/.test-installed  ## speed and memory targets (prints a table)
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) .demo .bench
