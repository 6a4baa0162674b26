# asyncwebrl — every command sets up what it needs (scripts/bootstrap.sh) first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PROTO_OUT := libs/common/src

.PHONY: setup test demo demo-down demo-envfleet protos bench bench-quick bench-report bench-e2e bench-staleness bench-normaliser bench-learning bench-envfleet bench-buffer bench-engine bench-rollout bench-trainer bench-weightsync bench-chaos bench-scale gpu-check sites-report gallery clean

setup:
	@bash scripts/bootstrap.sh

test: setup
	$(PY) -m pytest -q --durations=15 tests

# The main job: the local stack, the demo job (warm-start, then asynchronous GRPO), a report.
demo: setup
	$(PY) scripts/demo.py --run-dir runs/demo

demo-down: setup
	$(VENV)/bin/asyncwebrl --run-dir runs/demo down

# envfleet alone with a scripted agent through four MiniWoB tasks (screenshots in runs/demo-envfleet/).
demo-envfleet: setup
	$(PY) scripts/demo_envfleet.py

protos: setup
	$(PY) -m grpc_tools.protoc -I protos --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) \
		--grpc_python_out=$(PROTO_OUT) $$(find protos -name '*.proto' | sort)

# Every benchmark in turn (some hours here), then BENCHMARKS.md; bench-quick: reduced sizes (minutes),
# results in bench/results/quick/.
bench: setup
	$(PY) bench/all.py

bench-quick: setup
	$(PY) bench/all.py --quick

bench-report: setup
	$(PY) bench/report.py

bench-e2e: setup
	$(PY) bench/e2e.py

bench-staleness: setup
	$(PY) bench/e2e.py --etas 1,2,4,8 --staleness

bench-normaliser: setup
	$(PY) bench/normaliser.py

# The demo's recipe on 5 seeds: how many collapse (target none).
bench-learning: setup
	$(PY) bench/learning.py

bench-weightsync: setup
	$(PY) bench/weightsync.py

bench-trainer: setup
	$(PY) bench/trainer.py

bench-rollout: setup
	$(PY) bench/rollout.py

bench-engine: setup
	$(PY) bench/engine.py

bench-buffer: setup
	$(PY) bench/buffer.py

bench-envfleet: setup
	@bash bench/peers/setup.sh
	$(PY) bench/envfleet.py

# A quiet job for 10 min, then the same job while components are SIGKILLed ~every 45 s for 10 min; what was lost (~25 min).
bench-chaos: setup
	$(PY) bench/chaos.py

# The real buffer, weightsync and gateways with fake GPUs and browsers: async vs sync at balanced stages, and
# 32-1024 concurrent episodes, 4-64 engines: where each service saturates (~25 min).
bench-scale: setup
	$(PY) bench/scale.py

# The GPU path in one script (scripts/gpu_check.py): with a GPU, the 3B training step, the engine on CUDA
# and a weight transfer (< 8 min, runs/gpu_check.json); without one, the same code on a tiny model on the CPU.
gpu-check: setup
	$(PY) scripts/gpu_check.py --out runs/gpu_check.json \
		$$($(PY) -c 'import torch; print("" if torch.cuda.is_available() else "--cpu-smoke")')

# The built-in sites: oracle and random agents per template, docs/tasks.md, docs/gallery/*.png.
sites-report: setup
	$(PY) scripts/sites_report.py --seeds 3 --random-episodes 5

gallery: sites-report
	ASYNCWEBRL_WRITE_GALLERY=1 $(PY) -m pytest -q tests/api/test_viewer.py

clean:
	rm -rf $(VENV) runs
