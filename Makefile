# maft — every target is one line; CI runs the same commands.
PY      ?= .venv/bin/python
STAMP   := .venv/.maft-installed

.PHONY: help setup test test-slow test-gpu lint format demo demo-quick app bench

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv (reused when present) and install maft with the dev extra

test: $(STAMP)  ## run the default test suite (no slow/gpu/real-weights/real-data tests)
	$(PY) -m pytest -q --durations=15

test-slow: $(STAMP)  ## run the slow tests (multirun, DDP, wheel install, resume)
	$(PY) -m pytest -q -m slow --durations=15

test-gpu: $(STAMP)  ## run the GPU / real-weights / real-data tests (lent GPU machine); fails if none ran
	@log=$$(mktemp); \
	$(PY) -m pytest -q -rs -m "gpu or real_weights or real_data" --durations=15 >$$log 2>&1; rc=$$?; \
	cat $$log; [ $$rc -eq 0 ] || exit $$rc; \
	grep -qE "[0-9]+ passed" $$log || { echo "test-gpu: no GPU / real-weights / real-data test ran (all skipped)" >&2; exit 1; }

lint: $(STAMP)  ## ruff check + format check
	$(PY) -m ruff check src tests scripts && $(PY) -m ruff format --check src tests scripts

format: $(STAMP)  ## ruff fix + format
	$(PY) -m ruff check --fix src tests scripts && $(PY) -m ruff format src tests scripts

demo: $(STAMP)  ## the built-in world, end to end on CPU: world, tiny CLIP, proposals, frozen baselines, MAFT, report
	$(PY) -m maft.train experiment=world

demo-quick: $(STAMP)  ## the same pipeline on a smaller world with fewer steps (about a minute)
	$(PY) -m maft.train experiment=world_quick

app: $(STAMP)  ## serve the web demo on the demo's checkpoint (after make demo): http://127.0.0.1:7860
	$(PY) -m maft.app ckpt_path=outputs/world/latest/checkpoints/maft/final.ckpt short_side=64

bench: $(STAMP)  ## speed/memory figures (quick presets on CPU; see scripts/ for --preset real and --device cuda)
	$(PY) scripts/bench_ip_clip.py --preset quick --out bench_ip_clip.json && $(PY) scripts/bench_proposals.py --backbone resnet18 --size 128 --out bench_proposals.json && $(PY) scripts/bench_maft_step.py --preset quick --out bench_maft_step.json
