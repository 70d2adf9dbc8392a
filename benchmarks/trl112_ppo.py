"""TRL 1.12's PPOTrainer on the benchmark's models and prompts: the TRL side of benchmarks/ppo_throughput.py, which
runs it with the Python of .venv-trl112 (benchmarks/setup_trl112.sh) and reads the JSON it writes.

    .venv-trl112/bin/python benchmarks/trl112_ppo.py SPEC.json RESULT.json

SPEC.json (written by ppo_throughput.py): the benchmark's settings, the folder with the random models (sft/, rm/) and
the prompts' token ids. The settings map onto TRL's as the same work: the same answers per update and micro batch,
PPO epochs, minibatches, rollout chunk, answer length, LoRA and dtype. TRL's batch is per_device_train_batch_size x
gradient_accumulation_steps (num_mini_batches divides it), train_ppo.py's is that times num_mini_batches, so TRL gets
gradient_accumulation_steps x num_mini_batches. With stop_token unset TRL cuts nothing and generate() has no eos, so
every answer is response_length tokens long, as on the hf-ppo side.

Timed as train_ppo.py is: from the start of the update loop (on_train_begin) to the last update's log; generation is
TRL's batch_generation, scoring from there to the first training forward pass of the update, optimisation the rest.
"""

import json
import resource
import sys
import tempfile
import time

import torch
import trl.experimental.ppo.ppo_trainer as ppo_trainer
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from trl.experimental.ppo import PPOConfig, PPOTrainer

# train_ppo.py's PPOConfig defaults, so that both sides run the same recipe (only the cost matters here).
LORA = dict(
    r=32,
    lora_alpha=8,
    lora_dropout=0.0,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    task_type="CAUSAL_LM",
)
RECIPE = dict(
    learning_rate=5e-6,
    temperature=0.7,
    kl_coef=0.05,
    cliprange=0.1,
    cliprange_value=0.5,
    vf_coef=0.5,
    gamma=1.0,
    lam=0.95,
    missing_eos_penalty=1.0,
)


def now() -> float:
    """Seconds, after the GPU has finished the work queued so far."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class Clock(TrainerCallback):
    """The phases' wall time per update: the marks the wrapped TRL functions and the callbacks set."""

    def __init__(self):
        self.start = self.end = self.cpu_start = self.cpu_end = None
        self.phase_seconds = {"generation": 0.0, "scoring": 0.0, "optimization": 0.0}
        self.generated = self.training = None
        self.answer_widths = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = now()
        self.cpu_start = time.process_time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "episode" in logs:  # one per update, after its optimisation
            self.end = now()
            self.cpu_end = time.process_time()
            self.phase_seconds["optimization"] += self.end - self.training
            self.training = None

    def generation(self, function):
        def wrapper(model, queries, *args, **kwargs):
            started = now()
            query_responses, logits = function(model, queries, *args, **kwargs)
            self.generated = now()
            self.phase_seconds["generation"] += self.generated - started
            self.answer_widths.append(query_responses.shape[1] - queries.shape[1])
            return query_responses, logits

        return wrapper

    def forward(self, function):
        def wrapper(model, *args, **kwargs):
            if isinstance(model, ppo_trainer.PolicyAndValueWrapper) and self.training is None:
                self.training = now()  # the update's first training pass: scoring is over
                self.phase_seconds["scoring"] += self.training - self.generated
            return function(model, *args, **kwargs)

        return wrapper


def main(spec_path: str, result_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    models = spec["models"]
    tokenizer = AutoTokenizer.from_pretrained(f"{models}/sft")
    batch = spec["per_device_train_batch_size"] * spec["gradient_accumulation_steps"] * spec["num_mini_batches"]
    prompts = spec["prompts"] * -(-batch // len(spec["prompts"]))  # at least one batch: TRL drops a ragged last one
    dataset = Dataset.from_dict({"input_ids": prompts})
    policy = AutoModelForCausalLM.from_pretrained(f"{models}/sft", dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(
        f"{models}/sft", num_labels=1, dtype=torch.float32
    )
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        f"{models}/rm", num_labels=1, dtype=torch.float32
    )
    clock = Clock()
    with tempfile.TemporaryDirectory() as output_dir:
        config = PPOConfig(
            output_dir=output_dir,
            total_episodes=spec["episodes"],
            per_device_train_batch_size=spec["per_device_train_batch_size"],
            gradient_accumulation_steps=spec["gradient_accumulation_steps"] * spec["num_mini_batches"],
            num_mini_batches=spec["num_mini_batches"],
            num_ppo_epochs=spec["num_ppo_epochs"],
            local_rollout_forward_batch_size=spec["local_rollout_forward_batch_size"],
            response_length=spec["response_length"],
            stop_token=None,
            bf16=spec["bf16"],
            seed=spec["seed"],
            num_sample_generations=0,
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            **RECIPE,
        )
        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=None,  # with LoRA the reference is the policy with its adapter disabled, as in train_ppo.py
            reward_model=reward_model,
            value_model=value_model,
            train_dataset=dataset,
            eval_dataset=dataset,
            peft_config=LoraConfig(**LORA),
            callbacks=[clock],
        )
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        ppo_trainer.batch_generation = clock.generation(ppo_trainer.batch_generation)
        ppo_trainer.forward = clock.forward(ppo_trainer.forward)
        trainer.train()
    if set(clock.answer_widths) != {spec["response_length"]}:
        sys.exit(f"TRL's answers were {sorted(set(clock.answer_widths))} tokens wide, not {spec['response_length']}.")
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    result = {
        "episodes": trainer.state.episode,
        "seconds": clock.end - clock.start,
        "cpu_seconds": clock.cpu_end - clock.cpu_start,
        "phase_seconds": clock.phase_seconds,
        "peak_memory_gib": peak,
    }
    open(result_path, "w").write(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
