# The README's two commands: `make demo` and `make test`. Both set themselves up.
.PHONY: setup setup-dev demo test lint bench-quick clean

setup:
	@bash scripts/setup.sh

setup-dev:
	@bash scripts/setup.sh dev

demo: setup
	.venv/bin/conclugen demo $(ARGS)

lint: setup-dev
	.venv/bin/ruff check .

test: setup-dev
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q --durations=15 $(ARGS)

bench-quick: setup-dev
	.venv/bin/python benchmarks/kmeans.py --quick
	.venv/bin/python benchmarks/cluster_step.py --quick

clean:
	rm -rf work .pytest_cache .ruff_cache
