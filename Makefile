# Patient Power: every command a newcomer needs. Only Python 3.11+ is assumed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo up test test-unit test-integration test-e2e test-browser bench bench-ledger bench-e2e bench-feedback bench-payments bench-outbox whatif docs test-faults clean help

help:
	@echo "make demo   - install, start Kafka + PostgreSQL + 3 services, run a scripted month, print balances, stop"
	@echo "make up     - start the same stack and stay up until Ctrl-C"
	@echo "make test   - install and run the whole test suite (unit, integration, end-to-end, browser)"
	@echo "make test-browser - the portal in a real Chromium against the real stack (installs chromium when root)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python -m devtools.demo demo

up: install
	$(BIN)/python -m devtools.demo up

# pytest exits 5 when it collected no tests: that is a failure of intent, said out loud.
PYTEST = $(BIN)/python -m pytest
define run_pytest
	$(PYTEST) $(1); s=$$?; if [ $$s -eq 5 ]; then echo "no tests were collected: failing" >&2; fi; exit $$s
endef

# The browser tests need Debian's chromium and chromium-driver: the script installs them as root,
# and otherwise says what to run (the browser tests are then skipped, loudly).
BROWSER = bash tests/browser/install_browser.sh

test: install
	$(BROWSER)
	$(call run_pytest,tests/unit tests/integration tests/e2e tests/browser)

test-unit: install
	$(BIN)/python -m pytest tests/unit

test-integration: install
	$(BIN)/python -m pytest tests/integration

test-e2e: install
	$(BIN)/python -m pytest tests/e2e

test-browser: install
	$(BROWSER)
	$(call run_pytest,tests/browser)

bench-ledger: install
	$(BIN)/python -m bench.ledger

# One England day through the running system; `make bench-e2e ARGS=--quick` for the CI smoke run.
bench-e2e: install
	$(BIN)/python -m bench.e2e $(ARGS)

bench-feedback: install
	$(BIN)/python -m bench.feedback

bench-payments: install
	$(BIN)/python -m bench.payments $(ARGS)

bench-outbox: install
	$(BIN)/python -m bench.outbox $(ARGS)

test-faults: install
	$(call run_pytest,tests/faults -s -p no:logging)

docs: install
	$(BIN)/python -m devtools.docs

whatif: install
	$(BIN)/python -m services.payments.whatif --schemes services/payments/schemes --events services/payments/examples/events.jsonl

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
