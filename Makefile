# The two commands the README opens with:
#   make run    set up .venv (compiles uWSGI) and run the kit in the foreground
#   make test   set up .venv with the test tools and run lint, types and the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test check lint typecheck pytest system-deps soak bench bench-quick bench-profile \
	dashboard-screenshot clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamp files: reinstall only when a requirements file changes.
$(VENV)/.runtime-installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@ $(VENV)/.runtime-installed

run: $(VENV)/.runtime-installed
	$(BIN)/uwsgi --ini uwsgi.ini

test: system-deps check pytest

# nginx, systemd-analyze, shellcheck, logrotate: the deploy tests run them for real.
system-deps:
	scripts/test-deps.sh

check: lint typecheck

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	shellcheck deploy/install.sh scripts/*.sh .ci/run
	$(BIN)/hadolint deploy/Dockerfile

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

pytest: $(VENV)/.dev-installed system-deps
	$(BIN)/pytest $(PYTEST_ARGS)

# The long fault, load, fuzz, fault-matrix and stateful API runs (about 25 minutes);
# figures in soak-report.jsonl,
# written up in docs/reliability.md.
soak: $(VENV)/.dev-installed system-deps
	rm -f soak-report.jsonl
	SPOOLKIT_SOAK=1 SPOOLKIT_REPORT=$(CURDIR)/soak-report.jsonl $(BIN)/pytest -s --timeout 3600 \
		tests/test_faults.py tests/test_load.py tests/test_hostile_input.py tests/test_e2e_crashes.py \
		tests/test_fault_matrix.py tests/test_api_stateful.py

# The benchmark against the raw spooler and the peers (about 20 minutes): bench/RESULTS.md.
BENCH := bench/.venv/bin
$(BENCH)/python:
	$(PYTHON) -m venv bench/.venv

bench/.venv/.installed: requirements.txt bench/requirements.txt | $(BENCH)/python
	$(BENCH)/pip install --disable-pip-version-check -q -r bench/requirements.txt
	touch $@

bench: bench/.venv/.installed system-deps
	$(BENCH)/python -m bench.run

# The same, CI-sized (a few minutes), into bench/quick/: proves the benchmark still runs.
bench-quick: bench/.venv/.installed system-deps
	$(BENCH)/python -m bench.run --quick

# Where the kit's time goes per job (py-spy, strace -c; about 10 minutes, most of it the
# spoolers alone on a 100,000-job backlog): bench/PROFILE.md.
bench-profile: bench/.venv/.installed system-deps
	$(BENCH)/python -m bench.profile

# docs/dashboard.png: the jobs list with a render's progress bar mid-way, taken by the
# dashboard's browser test in headless Chromium (about 20 s).
dashboard-screenshot: $(VENV)/.dev-installed system-deps
	SPOOLKIT_SCREENSHOT=$(CURDIR)/docs/dashboard.png $(BIN)/pytest -q tests/test_dashboard_browser.py

clean:
	rm -rf $(VENV) bench/.venv .pytest_cache .mypy_cache .ruff_cache
