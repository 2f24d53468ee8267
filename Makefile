# Quick start: `make reproduce` (default workflow) and `make test` (test suite).
# Both create .venv with the pinned environment first; nothing else is needed but Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: reproduce test test-fast test-slurm lint verify costs gpu-check check-reproduction check-reproduction-seed lock clean-venv

$(BIN)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --editable .  # ncil itself: `import ncil` from any folder
	touch $@

reproduce: $(BIN)/.installed
	snakemake --cores $(CORES)

# Test tiers (docs/testing.md). test: the whole suite, as CI runs it (.ci/run), then the 20 slowest tests.
# test-fast: under 5 minutes on 2 cores, for every edit: no workflow run end to end, no training chain and
# nothing over ~10 s (marker slow), no SLURM cluster (slurm), no CUDA (gpu); then its 20 slowest tests.
# Both on TEST_WORKERS processes (pytest-xdist; most tests use one core, so 2 workers on 2 cores nearly halve
# them; TEST_WORKERS=0 runs one process). --dist loadfile keeps each file's tests, and its module fixtures, in
# one worker.
TEST_WORKERS ?= 2
test: $(BIN)/.installed
	python -m pytest -v -n $(TEST_WORKERS) --dist loadfile --durations=20

test-fast: $(BIN)/.installed
	python -m pytest -v -n $(TEST_WORKERS) --dist loadfile --durations=20 -m "not slow and not slurm and not gpu"

# profiles/slurm on a one-node SLURM started here (scripts/slurm_cluster.py: root installs slurm-wlm and
# munge with apt-get); the tiny grid must come out byte-identical to a local run. Skips, saying why, without SLURM.
test-slurm: $(BIN)/.installed
	python -m pytest -v -m slurm tests/test_slurm.py

# Recompute every number in results/ (metrics from evaluations, tables and figure data from metrics);
# exits non-zero naming the first mismatch (file, row, column, expected, found).
verify: $(BIN)/.installed
	python -m ncil verify

# Wall time and peak memory per setting and method, from Snakemake's benchmark files (not in results/).
costs: $(BIN)/.installed
	python -m ncil costs

# The GPU path in one command (scripts/gpu_check.py, <= 8 minutes on one GPU, no data set): the tests marked
# gpu, timed training steps of `ours`, `ours_official` and `pass_resnet18` at 32 pixels and `ours` at 64 and 224
# in each runtime.compile mode (eager, compiled, graphs: syncs, kernels and GPU-busy share per step), a
# JSON report (GPU_CHECK_OUT) and a table. It needs no venv, only torch, timm, numpy, pyyaml and pytest, so on
# a bare GPU machine it runs with that machine's python3; on the CPU pass GPU_CHECK_ARGS="--device cpu".
GPU_CHECK_OUT ?= benchmarks/gpu_check/report.json
GPU_CHECK_ARGS ?=
gpu-check:
	python3 scripts/gpu_check.py --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

lint: $(BIN)/.installed
	snakemake --lint
	python -m ncil dvc-yaml --check
	python -m ncil grid --check

# Hash every rerun output against dvc.lock (scripts/check_reproduction.py). Bit-identity is promised on
# the kind of machine recorded in results/platform.json (for a portable grid: on every CPU type that
# reproduced results/portable_reference.json, and, on a type that reproduced some backbones' reference
# outputs, for the outputs made with those backbones alone); elsewhere (exit 3) the differing files and
# the metric deltas are printed and the byte comparison ends there, with a warning, not a failure.
CHECK_LOCK = @rc=0; python scripts/check_reproduction.py lock || rc=$$?; \
	if [ $$rc -eq 3 ]; then echo "WARNING: rerun on another CPU type than results/platform.json: not (or only in part, as printed above) compared byte for byte"; exit 0; fi; \
	exit $$rc
CHECK_CLEAN = @rc=0; python scripts/check_reproduction.py platform --check-same || rc=$$?; \
	if [ $$rc -eq 3 ]; then echo "WARNING: results/ and dvc.lock not compared with git on another CPU type"; exit 0; fi; \
	[ $$rc -eq 0 ] || exit $$rc; \
	changed="$$(git status --porcelain -- dvc.lock results/ ':!results/costs')"; \
	if [ -n "$$changed" ]; then echo "not reproduced:"; echo "$$changed"; git diff --stat; exit 1; fi; \
	echo "$(REPRODUCED)"

# Rerun the default grid from scratch (Snakemake, in parallel), record its outputs the way `dvc repro`
# would, and fail unless dvc.lock and every committed result file are unchanged.
check-reproduction: $(BIN)/.installed
	snakemake --cores $(CORES)
	$(CHECK_LOCK)
	dvc commit --force --quiet dvc.yaml
	$(CHECK_CLEAN)
check-reproduction: REPRODUCED = reproduced: every output hashes to the committed dvc.lock, results/ unchanged

# One seed (SEED, default 1) of every setting x method, through Snakemake, from data to metrics.json (the
# whole grid takes 1-2 hours on 2 cores). COVER=1: the subset CI reruns, every method in the setting of
# fewest tasks and the first method (finetune) once in each other setting (`targets --cover` lists it). Fails unless every output it rewrote (data, splits, checkpoints, centers, evaluations)
# hashes to the committed dvc.lock and results/ is unchanged.
SEED ?= 1
COVER ?=
check-reproduction-seed: $(BIN)/.installed
	snakemake --cores $(CORES) $$(python scripts/check_reproduction.py targets --seed $(SEED) $(if $(COVER),--cover))
	$(CHECK_LOCK)
	$(CHECK_CLEAN)
check-reproduction-seed: REPRODUCED = reproduced: seed $(SEED) of $(if $(COVER),every method (in the shortest setting) and every setting,every setting and method) hashes to the committed dvc.lock, results/ unchanged

# Record the outputs of a finished Snakemake run in dvc.lock (what `dvc repro` would write), this
# machine as their producer (results/platform.json), the platform of each checkpoint from the
# platform.json beside it (results/<dataset>/platforms.json: it travels with the results), and copy the regenerated Table 1 into README.md's table1 block (verify checks the copy).
lock: $(BIN)/.installed
	rm -f dvc.lock  # written anew: a stage that left dvc.yaml must not stay behind in the lock
	dvc commit --force --quiet dvc.yaml
	python scripts/check_reproduction.py platform --write
	python scripts/check_reproduction.py platforms --write
	python -m ncil verify --refresh-readme

clean-venv:
	rm -rf $(VENV)
