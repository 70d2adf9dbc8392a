# make demo: the whole pipeline on the offline tiny preset (CPU, a few minutes), then every method compared.
# make test: the test suite, one worker per core. make figures: the README's charts in imgs/, from tiny runs of every
# stage in a temporary folder.
# make test-fast: the tests that build and train no model (under a minute), for the edit-test loop.
# Each sets up .venv on first use: torch first (a bare torch requirement would pull the multi-GB CUDA build).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
TORCH ?= torch==2.13.0
DEMO_QUESTIONS := 吃了没?\n地球离太阳多远?\n推荐一本书\n

.PHONY: demo test test-fast figures browser clean

demo: $(VENV)/installed
	$(PYTHON) train_sft.py --tiny
	@echo "== the tiny base, before SFT"
	printf '$(DEMO_QUESTIONS)' | $(PYTHON) eval_sft.py --tiny --model_path checkpoint/base/tiny
	@echo "== after SFT"
	printf '$(DEMO_QUESTIONS)' | $(PYTHON) eval_sft.py --tiny
	$(PYTHON) train_rm.py --tiny
	@echo "== the reward model on its held-out pairs"
	$(PYTHON) eval_rm.py --tiny < /dev/null
	@echo "== the reward model on hand-written pairs in styles the sample does not use (never trained on)"
	$(PYTHON) eval_rm.py --tiny --dataset_name data/style_pairs.jsonl --num_examples 0 \
		--metrics_file checkpoint/rm/style_metrics.json < /dev/null
	$(PYTHON) train_ppo.py --tiny
	@echo "== after PPO"
	printf '$(DEMO_QUESTIONS)' | $(PYTHON) eval_ppo.py --tiny
	$(PYTHON) train_dpo.py --tiny
	$(PYTHON) train_grpo.py --tiny
	$(PYTHON) train_ppo.py --tiny --from_base
	@echo "== every method on the questions no stage trained on"
	$(PYTHON) eval_ppo.py --tiny --compare

test: $(VENV)/installed browser
	$(PYTHON) -m pytest -n auto

# tests/test_web.py drives the chat page in Debian's Chromium and its chromedriver (pip's browser downloads need
# hosts CI cannot reach). Installed here when missing and apt-get can run (root, or sudo without a password);
# otherwise that one test skips and says why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "No Chromium, and no root or sudo to install it: the browser test of tests/test_web.py will skip."; \
		exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "No Chromium and no apt-get: the browser test will skip."; exit 0; fi; \
	echo "Installing Chromium and chromedriver for the browser test (apt-get)"; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium chromium-driver \
		|| echo "Installing Chromium failed (above): the browser test will skip."

# Runs write their charts beside their TensorBoard scalars (tensorboard/<stage>/<time>/<stage>.png), never into
# imgs/; this is the one command that does, from fresh tiny runs of its own (every stage, then the comparison).
figures: $(VENV)/installed
	tmp=$$(mktemp -d) && cd $$tmp && \
	$(abspath $(PYTHON)) $(CURDIR)/train_sft.py --tiny && \
	$(abspath $(PYTHON)) $(CURDIR)/train_rm.py --tiny && \
	$(abspath $(PYTHON)) $(CURDIR)/train_ppo.py --tiny && \
	$(abspath $(PYTHON)) $(CURDIR)/train_dpo.py --tiny && \
	$(abspath $(PYTHON)) $(CURDIR)/train_grpo.py --tiny && \
	$(abspath $(PYTHON)) $(CURDIR)/train_ppo.py --tiny --from_base && \
	$(abspath $(PYTHON)) $(CURDIR)/eval_ppo.py --tiny --compare && \
	for stage in sft rm ppo dpo grpo; do cp tensorboard/$$stage/*/$$stage.png $(CURDIR)/imgs/; done && \
	cp checkpoint/ppo/methods.png $(CURDIR)/imgs/ && \
	rm -rf $$tmp

test-fast: $(VENV)/installed
	$(PYTHON) -m pytest -m "not slow"

$(VENV)/installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet $(TORCH)
	$(PYTHON) -m pip install --quiet -r requirements-dev.txt
	touch $@

clean:
	rm -rf $(VENV) checkpoint tensorboard
