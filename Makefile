# Quickstart: `make serve` (set up, then serve the embedded model on :8000) and `make test`.
.PHONY: setup serve test
setup:
	./scripts/setup.sh
serve: setup
	.venv/bin/rain-serve --host 0.0.0.0 --port 8000
test: setup
	.venv/bin/python -m pytest -q tests
