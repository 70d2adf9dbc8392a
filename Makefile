# make demo: the whole pipeline on the offline tiny preset (CPU, a few minutes), then every method compared.
# make test: the test suite, one worker per core. make figures: the README's charts in imgs/, from tiny runs of every
# stage in a temporary folder.
# make test-fast: the tests that build and train no model (under a minute), for the edit-test loop.
# make seeds SEEDS="42 1 2": every stage of the tiny preset at each training seed, then every method's figures as
# mean ± sd across the seeds, with each seed's intervals.
# make test-real MODEL=DIR: the opt-in tier on a real model's local folder (tests/real/; minutes), never in make test.
# Each sets up .venv on first use: torch first (a bare torch requirement would pull the multi-GB CUDA build).
# This file, for the demo's own make calls from any folder
MAKEFILE := $(abspath $(firstword $(MAKEFILE_LIST)))
VENV ?= .venv
PYTHON := $(VENV)/bin/python
TORCH ?= torch==2.13.0

# The scripts' folder as a prefix: empty, or the project's for make figures, which runs the demo in a temporary folder.
SRC :=
DEMO_QUESTIONS := 吃了没?\n地球离太阳多远?\n推荐一本书\n
# The reward model runs first and builds the tiny base on the way. Every other step needs only the base, the reward
# model and SFT's checkpoint: they run two at a time, one thread each (a thread pool per process on every core would
# thrash; the results are the same bits), SFT and the longest first, each as soon as what it needs is there and its
# output printed when it ends. Chat with PPO or any other stage afterwards: eval_ppo.py --tiny, chat_web.py --tiny
# (the comparison prints every method's answers to three held-out questions).
DEMO_STEPS := demo-sft demo-ppo-base demo-ppo demo-dpo demo-grpo demo-rm demo-rm-styles demo-chat-base demo-chat-sft
# GNU make 4 prints each step's output whole; an older make (macOS ships 3.81) interleaves it.
DEMO_OUTPUT := $(if $(filter output-sync,$(.FEATURES)),--output-sync=target)

.PHONY: demo demo-run demo-real $(DEMO_STEPS) test test-fast test-real figures seeds browser clean

demo: $(VENV)/installed
	@$(MAKE) --no-print-directory -f $(MAKEFILE) demo-run

# --seed N for every training stage: make seeds sets it for each seed's run; empty, each stage's default (42).
SEED_FLAG :=

demo-run:
	$(PYTHON) $(SRC)train_rm.py --tiny $(SEED_FLAG)
	@echo "== then SFT, PPO, PPO from the base, DPO, GRPO, the reward model's evaluations and a chat with the base and"
	@echo "   SFT models, two at a time on one core each (about 2.5 minutes; each one's output shows when it ends)"
	@$(MAKE) --no-print-directory -f $(MAKEFILE) -j2 $(DEMO_OUTPUT) $(DEMO_STEPS)
	@echo "== every method on the questions no stage trained on"
	$(PYTHON) $(SRC)compare.py --tiny

$(DEMO_STEPS): export OMP_NUM_THREADS = 1
demo-ppo demo-dpo demo-grpo demo-chat-sft: demo-sft
demo-sft:
	$(PYTHON) $(SRC)train_sft.py --tiny $(SEED_FLAG)
demo-ppo-base:
	$(PYTHON) $(SRC)train_ppo.py --tiny --from_base $(SEED_FLAG)
demo-ppo:
	$(PYTHON) $(SRC)train_ppo.py --tiny $(SEED_FLAG)
demo-dpo:
	$(PYTHON) $(SRC)train_dpo.py --tiny $(SEED_FLAG)
demo-grpo:
	$(PYTHON) $(SRC)train_grpo.py --tiny $(SEED_FLAG)
demo-rm:
	@echo "== the reward model on its held-out pairs"
	$(PYTHON) $(SRC)eval_rm.py --tiny < /dev/null
demo-rm-styles:
	@echo "== the reward model on hand-written pairs in styles the sample does not use (never trained on)"
	$(PYTHON) $(SRC)eval_rm.py --tiny --dataset_name $(SRC)data/style_pairs.jsonl --num_examples 0 \
		--metrics_file checkpoint/rm_style_metrics.json < /dev/null
demo-chat-base:
	@echo "== the tiny base, before SFT"
	printf '$(DEMO_QUESTIONS)' | $(PYTHON) $(SRC)eval_sft.py --tiny --model_path checkpoint/base/tiny
demo-chat-sft:
	@echo "== after SFT"
	printf '$(DEMO_QUESTIONS)' | $(PYTHON) $(SRC)eval_sft.py --tiny

# The real model on a CPU (configs/cpu/): Qwen2.5-0.5B-Instruct, downloaded from ModelScope on first use, SFT, the
# reward model and PPO on the bundled sample, then the comparison (README, "The real run on a CPU"). Offline,
# download the model elsewhere and pass its folder: make demo-real MODEL=path/to/Qwen2.5-0.5B-Instruct.
MODEL ?= Qwen/Qwen2.5-0.5B-Instruct
REAL_DATA := --dataset_name $(SRC)data/sample.jsonl
demo-real: $(VENV)/installed
	$(PYTHON) $(SRC)train_sft.py --config $(SRC)configs/cpu/sft.yaml --model_name_or_path $(MODEL) $(REAL_DATA)
	$(PYTHON) $(SRC)train_rm.py --config $(SRC)configs/cpu/rm.yaml --model_name_or_path $(MODEL) $(REAL_DATA)
	$(PYTHON) $(SRC)train_ppo.py --config $(SRC)configs/cpu/ppo.yaml $(REAL_DATA)
	$(PYTHON) $(SRC)compare.py --base_model_path $(MODEL) --max_new_tokens 48

test: $(VENV)/installed browser
	$(PYTHON) -m pytest -n auto

# tests/test_chat_web.py drives the chat page in Debian's Chromium and its chromedriver (pip's browser downloads need
# hosts CI cannot reach), with a CJK font: a bare Debian has none, and the page and its screenshots show boxes for
# the Chinese. Installed here when missing and apt-get can run (root, or sudo without a password); otherwise the
# browser tests skip and say why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && fc-list :lang=zh 2>/dev/null | grep -q .; then \
		exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "No Chromium, and no root or sudo to install it: the browser test of tests/test_chat_web.py will skip."; \
		exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "No Chromium and no apt-get: the browser test will skip."; exit 0; fi; \
	echo "Installing Chromium, chromedriver and a CJK font for the browser test (apt-get)"; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium chromium-driver \
		fonts-noto-cjk || echo "Installing Chromium failed (above): the browser test will skip."

# Runs write their charts beside their TensorBoard scalars (tensorboard/<stage>/<time>/<stage>.png), never into
# imgs/; this is the one command that does, from a run of the demo of its own in a temporary folder. It also copies
# that run's reports to docs/reports/ and rewrites the figures README.md and docs/ quote from them (hfppo/figures.py).
figures: $(VENV)/installed
	tmp=$$(mktemp -d) && \
	$(MAKE) --no-print-directory -C $$tmp -f $(MAKEFILE) demo-run PYTHON=$(abspath $(PYTHON)) SRC=$(CURDIR)/ && \
	for stage in sft rm ppo dpo grpo; do cp $$tmp/tensorboard/$$stage/*/$$stage.png imgs/; done && \
	cp $$tmp/checkpoint/ppo/methods.png imgs/ && \
	$(PYTHON) -m hfppo.figures $$tmp && \
	rm -rf $$tmp

# Every stage of the tiny preset at each seed of SEEDS, each seed's run (make demo's, --seed on the reward model, SFT,
# PPO, PPO from the base, DPO and GRPO) in a folder of its own, checkpoint/seeds/<seed>/, which a rerun trains again.
# The tiny base and the comparison's sampling (compare.py --seed 42) are the same at every seed, so the seeds differ by
# their training alone. One seed after another, each running two steps at a time on one thread each, as make demo
# does: two seeds at once on 2 cores would thrash. Then hfppo/seeds.py prints every method's figures as mean ± sd
# across the seeds, with each seed's paired intervals, and writes docs/reports/seeds.json, which docs/results.md quotes
# (rewritten by hfppo/figures.py). About 3 minutes a seed on 2 idle cores.
SEEDS ?= 42 1 2
SEEDS_DIR := checkpoint/seeds
seeds: $(VENV)/installed
	@for seed in $(SEEDS); do case $$seed in *[!0-9]*) \
		echo "make seeds: SEEDS=\"$(SEEDS)\" holds $$seed, which is not a seed (a whole number, 0 or more)." >&2; \
		exit 2;; esac; done
	$(if $(SEEDS),,$(error make seeds: SEEDS is empty; give the training seeds, as in make seeds SEEDS="42 1 2"))
	$(if $(filter-out $(words $(SEEDS)),$(words $(sort $(SEEDS)))),$(error make seeds: SEEDS="$(SEEDS)" repeats a seed))
	for seed in $(SEEDS); do \
		echo "== seed $$seed: every stage in $(SEEDS_DIR)/$$seed" && mkdir -p $(SEEDS_DIR)/$$seed && \
		$(MAKE) --no-print-directory -C $(SEEDS_DIR)/$$seed -f $(MAKEFILE) demo-run PYTHON=$(abspath $(PYTHON)) \
			SRC=$(CURDIR)/ SEED_FLAG="--seed $$seed" || exit 1; \
	done
	$(PYTHON) -m hfppo.seeds --seeds $(SEEDS) --runs_dir $(SEEDS_DIR) --output_file docs/reports/seeds.json
	$(PYTHON) -m hfppo.figures

test-fast: $(VENV)/installed
	$(PYTHON) -m pytest -m "not slow"

# What only real weights show (tests/real/, tests/README.md): the chat template, eos and pad of the real tokenizer,
# one step of each stage, KL 0, the fused head, the audit, the export and the page, on MODEL in float32 on the CPU.
# tests/conftest.py collects tests/real/ only when HFPPO_REAL_MODEL names the folder; without one this runs nothing.
test-real: $(VENV)/installed
	@if [ ! -f "$(MODEL)/config.json" ]; then echo "make test-real skipped: $(MODEL) is not a local model folder. \
	Pass one: make test-real MODEL=path/to/Qwen2.5-0.5B-Instruct"; exit 0; fi; \
	HFPPO_REAL_MODEL="$(abspath $(MODEL))" $(PYTHON) -m pytest -p no:xdist tests/real

$(VENV)/installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet $(TORCH)
	$(PYTHON) -m pip install --quiet -r requirements-dev.txt
	touch $@

clean:
	rm -rf $(VENV) checkpoint tensorboard
