# tradebus: `make demo` shows the bus at work, `make test` runs every check. Both set up what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Reinstalled when pyproject.toml or constraints.txt changes; the stamp is written last, so an interrupted
# install is redone by the next run.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: install services browser promtool lint test demo demo-letrade clean

$(STAMP): pyproject.toml constraints.txt
	bash scripts/venv.sh $(PYTHON) $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

services:
	bash scripts/services.sh

# Debian's chromium and chromium-driver, for the Flower browser test (tests/live/test_flower_browser.py).
browser:
	bash scripts/browser.sh

# promtool checks the Prometheus config and unit-tests the alert rules (tests/unit/test_monitoring.py).
promtool:
	bash scripts/promtool.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The suite on two processes (a test file's tests share one, so a module's fixtures, the local cluster's
# included, start once), then the tests that need the machine to themselves (the demo, the benchmark, the
# broker restart) one by one. `.venv/bin/pytest` alone runs everything in one process.
test: install services browser promtool lint
	$(BIN)/pytest -n 2 --dist loadfile -m "not serial"
	$(BIN)/pytest -m serial

demo: install services
	$(BIN)/tradebus demo

# The second bus, Letrade_v1 (docs/letrade.md).
demo-letrade: install services
	$(BIN)/tradebus --topology letrade demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
