# tradebus: `make demo` shows the bus at work, `make test` runs every check. Both set up what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install services browser lint test demo demo-letrade clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "tradebus needs Python 3.11+"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

services:
	bash scripts/services.sh

# Debian's chromium and chromium-driver, for the Flower browser test (tests/live/test_flower_browser.py).
browser:
	bash scripts/browser.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install services browser lint
	$(BIN)/pytest

demo: install services
	$(BIN)/tradebus demo

# The second bus, Letrade_v1 (docs/letrade.md).
demo-letrade: install services
	$(BIN)/tradebus --topology letrade demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
