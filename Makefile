# The two commands of the README, each self-contained on a machine with Python 3.11 and pip:
#   make demo   create .venv, install the package, run the main job on the embedded default
#   make test   create .venv, install with dev extras, check notebooks and modules are in sync, run all tests
#   make test-fast  a developer's loop: the sync check, the library notebooks (not the tutorials, which train
#               models) and the tests not marked slow (tests/conftest.py says which are); `make test` runs everything
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/torchinductor
export MPLBACKEND := Agg

.PHONY: demo test test-fast nbtest-fast pytest-fast sync-check lint nbtest pytest pytest-parallel docs docs-serve browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.py settings.ini
	$(PIP) install -e . 2> >(grep -v "is ignored: it is neither" >&2)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -e ".[dev]" 2> >(grep -v "is ignored: it is neither" >&2)
	touch $@

# The main job on the embedded default: simulate (and cache) 6,000 Model II axion images and a test set, train a
# ResNet18 on the CPU (minutes on 2 cores: bench/default.py measures it), print test MAE/RMSE/R^2 beside the baseline,
# write runs/<timestamp>.
demo: $(VENV)/.installed
	$(BIN)/deeplense train

# Fails if nbdev-export or nbdev-clean would change a tracked file (or create an untracked one).
sync-check: $(VENV)/.installed-dev
	@git ls-files -z | xargs -0 sha1sum > .cache-sync-before 2>/dev/null || true
	$(BIN)/nbdev-export
	$(BIN)/nbdev-clean
	@git ls-files -z | xargs -0 sha1sum > .cache-sync-after 2>/dev/null || true
	@if ! cmp -s .cache-sync-before .cache-sync-after; then \
	  echo "nbdev-export/nbdev-clean changed tracked files (run them and commit):"; \
	  diff .cache-sync-before .cache-sync-after | grep '^>' ; rm -f .cache-sync-*; exit 1; fi
	@rm -f .cache-sync-*
	@untracked=$$(git ls-files --others --exclude-standard deeplense_fastai nbs); \
	  if [ -n "$$untracked" ]; then echo "untracked generated files (commit them): $$untracked"; exit 1; fi

# The house's habits: ruff on the exported package and the bench (pyproject.toml's [tool.ruff] says which rules);
# a finding in deeplense_fastai/ is fixed in its notebook, then nbdev-export. tools/lint.py drops only the E501 on
# the `__all__` line nbdev itself writes (it wraps at 120 characters, then prefixes `__all__ = `).
lint: $(VENV)/.installed-dev
	$(BIN)/python tools/lint.py

# One notebook at a time: two notebooks training at once on a 2-core machine oversubscribe torch's OpenMP threads,
# which made them ten times slower when measured. `--flags slow` runs the cells marked `#| slow` too (pyproject.toml's
# tst_flags): `make test-fast` leaves them out.
nbtest: $(VENV)/.installed-dev
	$(BIN)/nbdev-test --n-workers 1 --timing --flags slow

# The browser test's Chromium: used where present; installed with apt-get only where this is root with apt-get (the CI
# machine, a container); on anyone else's machine nothing is installed and the browser test skips, saying why.
# DEEPLENSE_REQUIRE_BROWSER=1 (set by .ci/run) turns a Chromium that could not be installed into a failure, so CI never
# skips the browser test.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  command -v google-chrome >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || { echo "could not install chromium with apt-get"; \
	           case "$$DEEPLENSE_REQUIRE_BROWSER" in ""|0) ;; *) exit 1;; esac; \
	           echo "the browser test will say so and skip"; }; \
	    else echo "chromium absent, not root with apt-get: nothing installed"; \
	      case "$$DEEPLENSE_REQUIRE_BROWSER" in ""|0) echo "the browser test will say so and skip";; *) exit 1;; esac; fi; }

pytest: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q --durations=25 tests

# `make test` runs the notebooks beside pytest, and pytest in two processes (pytest-xdist, a test file per process, so
# a file's module fixtures are built once; conftest's session fixtures, tiny runs, once per process), every process
# with one torch thread: run one after the other, the suite kept one of 2 cores busy (CPU time equal to wall time).
# Three one-thread processes on two cores share them; the oversubscription measured above was many threads per
# process. The checks that find a broken tree in seconds (sync, lint) and the browser run first.
pytest-parallel: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q --durations=25 -n 2 --dist loadfile tests

test: sync-check lint browser
	OMP_NUM_THREADS=1 $(MAKE) --no-print-directory -j2 --output-sync=target nbtest pytest-parallel

# The fast loop's two halves run side by side, one torch thread each: on 2 cores that is one core per half instead of
# two halves taking turns on both (the library notebooks and the fast tests are each mostly one process at a time).
test-fast: sync-check lint
	OMP_NUM_THREADS=1 $(MAKE) --no-print-directory -j2 --output-sync=target nbtest-fast pytest-fast

nbtest-fast: $(VENV)/.installed-dev
	$(BIN)/nbdev-test --n-workers 1 --timing --skip-folder-re '^([_.]|tutorials$$)'

pytest-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -m "not slow" --durations=10 tests

docs: $(VENV)/.installed-dev
	$(BIN)/python tools/docs.py site

docs-serve: docs
	$(BIN)/python -m http.server -d _site 8000

clean:
	rm -rf _proc _docs _site .docs_build .pytest_cache
