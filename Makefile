# Quickstart: `make serve` (set up, then serve the embedded model on :8000) and `make test`.
# `make docker-check` (as root) builds the CPU image and checks it end to end (docs/DEPLOY.md).
.PHONY: setup serve test docker-check
setup:
	./scripts/setup.sh
serve: setup
	.venv/bin/rain-serve --host 0.0.0.0 --port 8000
test: setup
	.venv/bin/python -m pytest -q tests
docker-check: setup
	bash scripts/docker_check.sh
