# asyncwebrl — every command sets up what it needs (scripts/bootstrap.sh) first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PROTO_OUT := libs/common/src

.PHONY: setup test demo demo-down demo-envfleet protos bench bench-envfleet bench-buffer bench-engine bench-rollout bench-trainer bench-weightsync sites-report gallery clean

setup:
	@bash scripts/bootstrap.sh

test: setup
	$(PY) -m pytest -q tests

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

bench: bench-envfleet bench-buffer bench-engine bench-rollout bench-trainer bench-weightsync

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

# The built-in sites: oracle and random agents per template, docs/tasks.md, docs/gallery/*.png.
sites-report: setup
	$(PY) scripts/sites_report.py --seeds 3 --random-episodes 5

gallery: sites-report

clean:
	rm -rf $(VENV) runs
