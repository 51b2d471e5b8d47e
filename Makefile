# The README's two commands: `make demo` and `make test`. Both create .venv
# first if needed (`make install`, idempotent: seconds when complete).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: install test demo benchmark clean-venv

install:
	bash tools/install/setup_env.sh

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo/run_demo.py

# Every benchmark table in benchmarks/README.md (CPU):
# speed/memory/parameters, detection accuracy on the demo transfer (reuses
# the base `make demo` published, trains it if absent), ViT accuracy,
# task switching and mixed-task batches, the prefix ablation, what
# checkpointed layers keep, the optimizer step.
SEEDS ?= 0 1 2
BENCH_ARCHS ?= detr_r50_coco deformable-detr_r50_coco vit-b16_cifar100 \
	dino-4scale_r50_coco
benchmark: install
	$(PY) tools/analysis_tools/petl_benchmark.py --archs $(BENCH_ARCHS) --readme
	$(PY) tools/analysis_tools/accuracy_benchmark.py --seeds $(SEEDS) --reuse --readme
	$(PY) tools/analysis_tools/vit_accuracy_benchmark.py --seeds $(SEEDS) --readme
	$(PY) tools/analysis_tools/task_benchmark.py --readme
	$(PY) tools/analysis_tools/prefix_ablation.py --seeds $(SEEDS) --reuse --readme
	$(PY) tools/analysis_tools/ckpt_ablation.py --readme
	$(PY) tools/analysis_tools/optimizer_step_benchmark.py

clean-venv:
	rm -rf .venv
