# aegis — two commands do everything on a fresh clone: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
AEGIS  := $(VENV)/bin/aegis
STAMP  := $(VENV)/.installed
MODELS := models
RUNS   := runs

.PHONY: demo test lint bench clean wheel-check

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[keras,onnx,dev]'
	@touch $(STAMP)

# Train (or reuse) the reference MNIST model, then run the seed's scenario: targeted PGD toward
# class 5, step 0.01, 100 iterations, 90% required; then an untargeted PGD; then the minimal L2
# perturbation of 200 inputs (FMN) with the accuracy-vs-ε curve.
demo: $(STAMP)
	$(AEGIS) train --dataset mnist --out $(MODELS)
	$(AEGIS) attack $(MODELS)/mnist_cnn.safetensors mnist --attack pgd --norm linf --eps 0.3 \
		--step-size 0.01 --steps 100 --target 5 --success-threshold 0.9 --overwrite \
		--out $(RUNS)/demo-targeted
	$(AEGIS) attack $(MODELS)/mnist_cnn.safetensors mnist --attack pgd --norm linf --eps 0.3 \
		--step-size 0.01 --steps 100 --success-threshold 0.9 --overwrite \
		--out $(RUNS)/demo-untargeted
	$(AEGIS) attack $(MODELS)/mnist_cnn.safetensors mnist --attack fmn --norm l2 --limit 200 \
		--overwrite --out $(RUNS)/demo-minimal-l2

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/bench_pgd.py

# The built sdist and wheel work on their own: a fresh venv (CPU torch, then the wheel) runs
# aegis --help, train and a small attack from outside the clone (about 1.5 minutes; .ci/run
# runs it after make test).
wheel-check: $(STAMP)
	.ci/wheel-check

clean:
	rm -rf $(VENV) $(RUNS) .mypy_cache .ruff_cache .pytest_cache
