# Two commands on a fresh machine with Python 3.11:  make demo  |  make test
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Metaflow refuses to run as root without a user name (CI containers).
export METAFLOW_USER ?= $(if $(filter root,$(shell id -un)),demo,$(shell id -un))

.PHONY: demo test test-lowest lint docs bench bench-report clean

# Every pip install here is held to constraints.txt: the exact versions CI tests (setup.py states
# the ranges users may install; tests/test_versions.py checks that the two agree).
PIP_C := -c constraints.txt

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(PIP_C) --upgrade pip

$(VENV)/.installed: setup.py constraints.txt | $(BIN)/python
	$(BIN)/pip install -q $(PIP_C) -e ".[torch,s3]"
	touch $@

# The checkpoint card's test renders it in headless Chromium (Debian's package); the reflink
# load tests loop-mount XFS and btrfs images (xfsprogs, btrfs-progs; tests/reflink_fs.py).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Azurite (Azure Storage emulator, npm) pinned by tests/emulators/package-lock.json, in the venv.
$(VENV)/.test-installed: setup.py constraints.txt tests/emulators/package-lock.json $(VENV)/.installed
	$(BIN)/pip install -q $(PIP_C) -e ".[torch,s3,test]"
	mkdir -p $(VENV)/emulators && cp tests/emulators/package.json tests/emulators/package-lock.json $(VENV)/emulators/
	npm ci --prefix $(VENV)/emulators --no-audit --no-fund --loglevel=error
	command -v chromium >/dev/null 2>&1 && command -v mkfs.xfs >/dev/null 2>&1 && \
		command -v mkfs.btrfs >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		chromium xfsprogs btrfs-progs; }
	touch $@

demo: $(VENV)/.installed  ## train a tiny model that crashes once and resumes from its checkpoint
	$(BIN)/python examples/run_demo.py

test: $(VENV)/.test-installed  ## lint + the whole test suite (starts its own local S3 server)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 -q --durations=25 tests

# The same suite on the lowest Metaflow setup.py admits (its metaflow>= floor), everything else as
# pinned in constraints.txt, in a venv of its own. Not in CI: run it before moving the floor or
# after bumping the metaflow pin. The emulators and Chromium come from make test's install.
LOWEST  := .venv-lowest
METAFLOW_FLOOR := $(shell sed -n 's/^ *"metaflow>=\([0-9.]*\),.*/\1/p' setup.py)

$(LOWEST)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install -q $(PIP_C) --upgrade pip
	grep -v '^metaflow==' constraints.txt > $(LOWEST)/constraints.txt
	$(LOWEST)/bin/pip install -q -c $(LOWEST)/constraints.txt -e ".[torch,s3,test]" \
		"metaflow==$(METAFLOW_FLOOR)"
	touch $@

test-lowest: $(LOWEST)/.installed $(VENV)/.test-installed  ## the suite on the lowest supported Metaflow
	$(LOWEST)/bin/python -c 'import metaflow; print("metaflow", metaflow.__version__)'
	$(LOWEST)/bin/python -m pytest -n 2 -q tests

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: $(VENV)/.test-installed  ## build the mkdocs site strictly (broken links fail)
	$(BIN)/mkdocs build --strict -d site

# The bench extra: matplotlib for bench_curves.py's PNGs (make test does not need it).
$(VENV)/.bench-installed: setup.py constraints.txt $(VENV)/.test-installed
	$(BIN)/pip install -q $(PIP_C) -e ".[torch,s3,test,bench]"
	touch $@

bench: $(VENV)/.bench-installed  ## speed and memory targets (prints a table)
	$(BIN)/python benchmarks/bench.py

# Runs every benchmark (bench_vs_reference.py builds the reference's venv under .bench/ once) and
# rewrites README.md's Performance section from what they measured. Long: run on a quiet machine.
bench-report: $(VENV)/.bench-installed  ## benchmarks -> README.md's Performance section
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) $(LOWEST) .demo .bench
