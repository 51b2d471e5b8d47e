# The README's two commands: `make demo` and `make test`. Both create .venv
# first if needed (`make install`, idempotent: seconds when complete).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: install test demo clean-venv

install:
	bash tools/install/setup_env.sh

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo/run_demo.py

clean-venv:
	rm -rf .venv
