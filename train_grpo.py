"""Stage 3, GRPO (the alternative to PPO): the SFT model with PPO's LoRA adapter samples a group of answers to each
question, and each answer's advantage is its reward-model score against the group's mean, in units of the group's
standard deviation; no critic (Group Relative Policy Optimization, Shao et al. 2024, arXiv:2402.03300). TRL's
GRPOTrainer, scored by the same reward model at the same token as train_ppo.py, so the two compare on equal terms.

    python train_grpo.py --tiny                     # offline tiny preset on a CPU, under a minute
    python train_grpo.py                            # Qwen2.5-0.5B-Instruct, after train_sft.py and train_rm.py
    python train_grpo.py --num_generations 16      # every field is a flag (--help), or a key of a --config YAML

Writes the policy's LoRA adapter, tokenizer and held-out questions to checkpoint/grpo, TensorBoard scalars and their
chart to tensorboard/grpo/<time> (grpo.png). Compare it with the SFT model and PPO: compare.py.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from trl import GRPOConfig, GRPOTrainer, ModelConfig, get_peft_config

import common
from hfppo import charts, checkpoints, cli, errors, hints, lifecycle, lora, outputs, paths, resuming, runtime, training

# The real run: PPO's LoRA, sampling, answer length, learning rate and number of sampled answers, so that the two
# methods differ in how they turn scores into updates only (README, GRPO, instead of PPO).
DEFAULTS = dict(
    output_dir=str(paths.GRPO_DIR),
    use_peft=True,
    lora_r=lora.LORA_R,
    lora_alpha=lora.LORA_ALPHA,
    lora_dropout=0.0,  # as PPO's: no dropout anywhere, so log-probs are deterministic and the ratio is 1 at the start
    lora_target_modules=list(lora.LORA_TARGET_MODULES),
    disable_dropout=True,
    learning_rate=5e-6,  # PPO's (TRL's GRPO default is 1e-6)
    # 8 answers a question (TRL's default), 4 questions an optimizer step; 2 / 8 of an epoch samples 2 answers per
    # training question in all, as PPO's 2 epochs of one answer each.
    num_generations=8,
    per_device_train_batch_size=8,
    gradient_accumulation_steps=4,
    num_train_epochs=0.25,
    # The KL penalty to the SFT model (the adapter switched off) of the GRPO paper, where TRL's default 0 drops it:
    # PPO keeps its policy near the SFT model too (kl_coef 0.05), and a comparison of the two should not let one
    # method drift freely.
    beta=0.04,
    # PPO's sampling: softmax(logits / 0.7) and nothing else, up to 200 tokens. TRL passes these to generate() as
    # set, overriding Qwen's generation_config.json (top_k 20, top_p 0.8, repetition_penalty 1.05), and computes the
    # log-probs at the same temperature.
    temperature=0.7,
    top_p=1.0,
    top_k=0,
    min_p=None,
    repetition_penalty=1.0,
    max_completion_length=200,
    logging_steps=1,
    report_to="tensorboard",
    activation_checkpointing=False,  # TRL turns it on; PPO runs without it and 0.5B fits without it
    bf16=runtime.bf16_available(),
    dataloader_pin_memory=runtime.accelerator_available(),
)
# A CPU-sized run of the same recipe, on the tiny SFT and reward models: PPO's tiny answer length and learning rate;
# 10 batches of 4 answers to each of 4 questions, each batch trained on twice (num_iterations, as PPO's tiny run makes
# several passes over each batch), so that the reward rises within seconds.
TINY_PRESET = dict(
    model_source="tiny",
    dataset_name=str(paths.SAMPLE_DATA),
    max_completion_length=48,
    learning_rate=3e-3,
    num_generations=4,
    per_device_train_batch_size=16,
    gradient_accumulation_steps=1,
    num_iterations=2,
    max_steps=20,
    save_strategy="no",
)
CHART_TAGS = [
    "train/reward", "train/kl", "train/entropy", "train/completions/mean_length", "train/completions/clipped_ratio",
    "train/reward_std",
]  # fmt: skip


@dataclass
class ScriptArguments(cli.StageArguments):
    sft_model_path: str = field(
        default=str(paths.SFT_DIR), metadata={"help": "The SFT model: the policy's frozen base and the reference."}
    )
    reward_model_path: str = field(default=str(paths.RM_DIR), metadata={"help": "The reward model, frozen."})
    missing_eos_penalty: float = field(
        default=1.0,
        metadata={
            "help": "Subtracted from the score of an answer cut at max_completion_length before its stop token, as "
            "train_ppo.py's --missing_eos_penalty: the policy learns to finish its answers.",
            "range": f"[0, {cli.MAX_COEFFICIENT}]",
        },
    )


def trl_reward_function(model, tokenizer, system_prompt: str, missing_eos_penalty: float, batch_size: int):
    """common.reward_model_fn in TRL's signature of a reward function: each answer scored as train_ppo.py does, on the
    prompt's ids (common.prompt_ids) followed by the sampled answer's ids, read at the answer's last token, minus
    `missing_eos_penalty` where that token is not the stop token.

    Not TRL's own reward-model path (a model passed as reward_funcs), which scores something else
    (trl/trainer/grpo_trainer.py, GRPOTrainer._calculate_rewards, TRL 1.16): it decodes each answer to text without
    its special tokens (`batch_decode(completion_ids, skip_special_tokens=True)`), renders prompt + answer with the
    chat template (`apply_chat_template(...)["text"]`) and tokenizes that text again. The template closes the answer
    with <|im_end|> and a newline, so the score is read at that "\\n", a token the reward model was never trained to
    score at (common.conversation_ids cuts it), an answer cut at max_completion_length is closed as if it had
    finished, and text re-tokenized need not give the ids the policy sampled.
    """

    score = common.reward_model_fn(model, tokenizer, batch_size, missing_eos_penalty)

    def reward_model(prompts, completions, completion_ids, question, system, **kwargs) -> list[float]:
        queries = [
            common.prompt_ids(tokenizer, {"question": q, "system": s}, system_prompt) for q, s in zip(question, system)
        ]
        return score(queries, completion_ids).cpu().tolist()

    return reward_model


def make_trainer(sft_model_path: str, tokenizer, reward_fn, prompts, training_args, model_args) -> GRPOTrainer:
    """GRPOTrainer on the SFT model with a new LoRA adapter (model_args), sampling as PPO does.

    The model is loaded here rather than by GRPOTrainer, to stop at the end-of-turn token only, as PPO: TRL stops at
    every eos id of the model's generation_config.json (Qwen's lists <|endoftext|> too) and cuts each answer after
    the first. fp32 weights, as PPO's; on a GPU with bf16 units the Trainer computes under bf16 autocast (--bf16).
    With a LoRA adapter and beta > 0, the reference is the same model with the adapter switched off (as PPO's).
    """
    policy = AutoModelForCausalLM.from_pretrained(sft_model_path, dtype=torch.float32)
    policy.generation_config.eos_token_id = tokenizer.eos_token_id
    lora.check_target_modules(policy, model_args.lora_target_modules, sft_model_path)
    return GRPOTrainer(
        model=policy,
        reward_funcs=reward_fn,
        args=training_args,
        train_dataset=prompts,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )


def main(script_args: ScriptArguments, training_args: GRPOConfig, model_args: ModelConfig) -> None:
    training.check_report_to(training_args.report_to)  # before any model loads, as train_ppo.py does
    if model_args.model_name_or_path not in (None, script_args.sft_model_path):
        raise errors.ArgumentError(
            "train_grpo.py trains the SFT model: pass it as --sft_model_path, not --model_name_or_path."
        )
    if not model_args.use_peft:
        raise errors.ArgumentError(
            "train_grpo.py trains a LoRA adapter, PPO's, so that the two methods compare on equal terms: keep "
            "--use_peft."
        )
    if script_args.eval_fraction == 0:  # the range is checked with every flag's (cli.check_values)
        raise errors.ArgumentError(
            "train_grpo.py holds questions out for compare.py: --eval_fraction must be above 0."
        )
    model_args.model_name_or_path = script_args.sft_model_path
    inputs = {"sft_model_path": script_args.sft_model_path, "reward_model_path": script_args.reward_model_path}
    settings = resuming.check_trainer_run(script_args, training_args, model_args, inputs, "train_grpo.py")

    # Data first: a bad file fails in a second, before any model is loaded.
    data = common.load_preference_data(script_args.dataset_name, script_args.model_source)
    train_rows, held_out = common.split_held_out(data, script_args.eval_fraction)  # the same rows in every stage

    # Every input folder checked for what its role needs before any model loads: a wrong one fails in a second.
    sft_command = hints.policy_command("sft", script_args.sft_model_path, script_args.tiny)
    checkpoints.require_checkpoint(script_args.sft_model_path, sft_command, "language model")
    rm_command = hints.reward_model_command(script_args.reward_model_path, script_args.tiny)
    checkpoints.require_checkpoint(script_args.reward_model_path, rm_command, "reward model")
    # A policy or reward model that trained on this run's held-out questions would flatter the comparison on them.
    saved_as = Path(training_args.output_dir) / paths.HELD_OUT_FILE
    common.check_same_held_out(held_out, saved_as, script_args.sft_model_path, "SFT model", "--sft_model_path")
    common.check_same_held_out(
        held_out, saved_as, script_args.reward_model_path, "reward model", "--reward_model_path"
    )
    # The question and system columns reach the reward function, which builds PPO's prompt ids from them.
    prompts = train_rows.remove_columns(["chosen", "rejected"]).add_column(
        "prompt", [common.prompt_messages(row, script_args.system_prompt) for row in train_rows]
    )

    tokenizer = checkpoints.load_tokenizer(script_args.sft_model_path, sft_command)
    common.check_pad_token(tokenizer, script_args.sft_model_path)
    common.refuse_control_tokens(data, script_args.dataset_name, tokenizer)
    reward_model, rm_tokenizer = common.load_model(
        AutoModelForSequenceClassification, script_args.reward_model_path, rm_command, "reward model"
    )
    common.check_pad_token(rm_tokenizer, script_args.reward_model_path, reward_model)
    common.check_same_tokenizer(
        tokenizer, rm_tokenizer, f"the reward model ({script_args.reward_model_path})", script_args.sft_model_path
    )
    reward_fn = trl_reward_function(
        reward_model,
        tokenizer,
        script_args.system_prompt,
        script_args.missing_eos_penalty,
        training_args.per_device_train_batch_size,
    )

    lifecycle.lock_output_dir(training_args.output_dir)
    run_dir = charts.tensorboard_run("grpo")
    trainer = make_trainer(script_args.sft_model_path, tokenizer, reward_fn, prompts, training_args, model_args)
    runtime.check_distributed(trainer.accelerator.state)  # a sharded config accelerate turned into another
    training.compact_progress(trainer)  # per-step values go to TensorBoard, not stdout
    trainer.accelerator.print(
        f"GRPO of {script_args.sft_model_path}: {len(prompts)} training questions, {training_args.num_generations} "
        f"answers to each sampled together, {len(held_out)} held out; TensorBoard: {run_dir}"
    )
    result = training.train_stage(trainer, settings, training_args.resume_from_checkpoint)
    # Answers sampled per second, as train_ppo.py's (the Trainer's train_samples_per_second counts questions): each
    # optimizer step trains on a batch of answers, and each answer is trained on num_iterations times.
    args = trainer.args
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    answers_per_second = trainer.state.global_step * batch / args.num_iterations / result.metrics["train_runtime"]
    outputs.save_trainer_stage(trainer, held_out, script_args.system_prompt, result.metrics, answers_per_second)

    if trainer.is_world_process_zero():
        curves = charts.curves_note(
            run_dir, CHART_TAGS, f"GRPO: {script_args.sft_model_path}", training_args.report_to
        )
        compare = hints.command(
            "compare.py",
            script_args.tiny,
            grpo_model_path=hints.unless_default(training_args.output_dir, paths.GRPO_DIR),
            sft_model_path=hints.unless_default(script_args.sft_model_path, paths.SFT_DIR),
            reward_model_path=hints.unless_default(script_args.reward_model_path, paths.RM_DIR),
        )
        print(f"Adapter saved to {training_args.output_dir}{curves}. Compare the methods: {compare}")


def make_parser() -> cli.Parser:
    parser = cli.Parser((ScriptArguments, GRPOConfig, ModelConfig))
    parser.set_defaults(**DEFAULTS)
    return parser


if __name__ == "__main__":
    runtime.setup()
    with lifecycle.user_errors():
        main(*cli.parse_args(make_parser(), TINY_PRESET))
