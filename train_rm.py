"""Stage 2, reward model: the base model plus a linear score head, trained on chosen vs rejected answers with the
pairwise (Bradley-Terry) loss -log sigmoid(r_chosen - r_rejected) (InstructGPT's RM step, Ouyang et al. 2022,
arXiv:2203.02155).

    python train_rm.py --tiny                       # offline tiny preset on a CPU, under a minute
    python train_rm.py                              # Qwen2.5-0.5B-Instruct on btfChinese-DPO-small, on a GPU
    python train_rm.py --config configs/rm.yaml     # every field is settable from YAML as well as the CLI

Writes the model, tokenizer and held-out pairs to checkpoint/rm, TensorBoard scalars and their chart to
tensorboard/rm/<time> (rm.png). Score it with eval_rm.py.
"""

from dataclasses import dataclass

from datasets import Dataset
from trl import ModelConfig, RewardConfig, RewardTrainer

import common
from hfppo import charts, checkpoints, cli, errors, hints, lifecycle, outputs, paths, resuming, runtime, tiny, training

# The original run: the base model (not the SFT one), every row, 2 epochs, 4 x 8 pairs per step.
DEFAULTS = dict(
    model_name_or_path=paths.DEFAULT_MODEL,
    output_dir=str(paths.RM_DIR),
    num_train_epochs=2,
    per_device_train_batch_size=4,
    gradient_accumulation_steps=8,
    learning_rate=1e-5,
    max_length=common.REWARD_MAX_LENGTH,
    # Adds 0.01 * (r_chosen + r_rejected)^2 to the loss (Eisenstein et al. 2023, arXiv:2312.09244): rewards stay
    # centred on 0, so a positive score means "the preferred style" and PPO's reward scale does not drift.
    center_rewards_coefficient=0.01,
    eval_strategy="steps",
    eval_steps=0.1,  # a fraction of the run: ten held-out evaluations whatever the dataset size
    logging_steps=1,
    report_to="tensorboard",
    activation_checkpointing=False,  # TRL turns it on; the original ran without it and 0.5B fits without it
    ddp_find_unused_parameters=False,  # every parameter gets a gradient: skip DDP's search for unused ones
    bf16=runtime.bf16_available(),
    dataloader_pin_memory=runtime.accelerator_available(),
)
# A CPU-sized run of the same recipe: a higher learning rate, smaller steps and 4 epochs, so the tiny model learns the
# styles in seconds (swept over seeds on data/style_pairs.jsonl, pairs in styles the sample does not use:
# data/README.md); weight decay 0.1, kept from the earlier recipe (0 or 0.1 made no difference in that sweep).
TINY_PRESET = dict(
    model_name_or_path=str(paths.TINY_BASE_DIR),
    model_source="tiny",
    dataset_name=str(paths.SAMPLE_DATA),
    num_train_epochs=4,
    per_device_train_batch_size=8,
    gradient_accumulation_steps=1,
    learning_rate=1e-3,
    weight_decay=0.1,
    lr_scheduler_type="cosine",
    warmup_steps=5,
    max_length=tiny.TINY_RM_MAX_LENGTH,
    save_strategy="no",
)
CHART_TAGS = ["train/loss", "train/accuracy", "eval/accuracy", "eval/margin"]


@dataclass
class ScriptArguments(cli.StageArguments):
    """cli.StageArguments' flags (--eval_fraction among them: the held-out pairs, evaluated during training and
    saved with the model for eval_rm.py; 0 trains on every pair, as the original did)."""


def tokenize_pairs(rows: Dataset, tokenizer, system_prompt: str, max_length: int | None, split: str) -> Dataset:
    """Token ids of each row's chosen and rejected conversation, without the pairs longer than `max_length`.

    Tokenized here rather than by RewardTrainer, so that every sequence ends at its answer's eos, the token the score
    is read at in every stage (see common.reward_scores). Cutting a pair would cut the eos off, so a longer pair is
    dropped whole; `split` ("training", "held-out") names the pairs in the messages.
    """
    pairs = rows.map(
        common.rm_example,
        fn_kwargs={"tokenizer": tokenizer, "system_prompt": system_prompt},
        remove_columns=rows.column_names,
    )
    if max_length is None:
        return pairs
    lengths = [max(len(chosen), len(rejected)) for chosen, rejected in zip(pairs["chosen_ids"], pairs["rejected_ids"])]
    kept = pairs.select([i for i, length in enumerate(lengths) if length <= max_length])
    if not len(kept):
        raise errors.PipelineError(
            f"all {len(pairs)} {split} pairs are longer than --max_length {max_length} tokens (the shortest has "
            f"{min(lengths)}), so none is left. Raise --max_length to at least {min(lengths)}, or use shorter rows"
            + (", or --eval_fraction 0 to hold none out." if split == "held-out" else ".")
        )
    if len(kept) < len(pairs):
        print(f"Dropped {len(pairs) - len(kept)} of {len(pairs)} {split} pairs longer than --max_length {max_length}.")
    return kept


def main(script_args: ScriptArguments, training_args: RewardConfig, model_args: ModelConfig) -> None:
    training.check_report_to(training_args.report_to)  # before any model loads, as train_ppo.py does
    if model_args.use_peft:
        raise errors.PipelineError("train_rm.py trains every parameter, as the original. Drop --use_peft.")

    settings = resuming.check_trainer_run(
        script_args,
        training_args,
        model_args,
        {"model_name_or_path": model_args.model_name_or_path},
        "train_rm.py",
    )

    # Data first: a bad file fails in a second, before any download or write.
    data = common.load_preference_data(script_args.dataset_name, script_args.model_source)
    train_rows, held_out = common.split_held_out(data, script_args.eval_fraction)  # the same rows in every stage
    if not len(held_out):
        held_out = None
        training_args.eval_strategy = "no"

    model_path = common.resolve_model(
        model_args.model_name_or_path, script_args.model_source, flag="--model_name_or_path"
    )
    base_command = hints.base_model_remedy(model_path, "model_name_or_path")
    checkpoints.require_checkpoint(model_path, base_command, "language model")
    tokenizer = checkpoints.load_tokenizer(model_path, base_command, revision=model_args.model_revision)
    tokenizer.eos_token = training_args.eos_token or tokenizer.eos_token
    tokenizer.pad_token = training_args.pad_token or tokenizer.pad_token
    common.check_pad_token(tokenizer, model_path)
    common.refuse_control_tokens(data, script_args.dataset_name, tokenizer)

    train_dataset = tokenize_pairs(
        train_rows, tokenizer, script_args.system_prompt, training_args.max_length, "training"
    )
    eval_dataset = None
    if held_out is not None:
        eval_dataset = tokenize_pairs(
            held_out, tokenizer, script_args.system_prompt, training_args.max_length, "held-out"
        )

    training_args.model_init_kwargs = dict(
        revision=model_args.model_revision, dtype=model_args.dtype, attn_implementation=model_args.attn_implementation
    ) | (training_args.model_init_kwargs or {})
    lifecycle.lock_output_dir(training_args.output_dir)
    run_dir = charts.tensorboard_run("rm")

    # From a model path, RewardTrainer builds AutoModelForSequenceClassification with num_labels=1 (a linear score
    # head on the last hidden state) and sets config.pad_token_id from the tokenizer, which is how the head finds
    # the last non-pad token to score.
    trainer = RewardTrainer(
        model=model_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )
    runtime.check_distributed(trainer.accelerator.state)  # a sharded config accelerate turned into another
    training.compact_progress(trainer)  # per-step values go to TensorBoard, not stdout
    trainer.accelerator.print(
        f"Reward model from {model_path} on {len(train_dataset)} pairs of {script_args.dataset_name}, "
        f"{len(eval_dataset) if eval_dataset is not None else 0} held out; TensorBoard: {run_dir}"
    )
    result = training.train_stage(trainer, settings, training_args.resume_from_checkpoint)
    outputs.save_trainer_stage(trainer, held_out, script_args.system_prompt, result.metrics)

    if trainer.is_world_process_zero():
        curves = charts.curves_note(run_dir, CHART_TAGS, f"Reward model: {model_path}", training_args.report_to)
        score = hints.command(
            "eval_rm.py", script_args.tiny, model_path=hints.unless_default(training_args.output_dir, paths.RM_DIR)
        )
        print(f"Model saved to {training_args.output_dir}{curves}. Score it: {score}")


def make_parser() -> cli.Parser:
    parser = cli.Parser((ScriptArguments, RewardConfig, ModelConfig))
    parser.set_defaults(**DEFAULTS)
    return parser


if __name__ == "__main__":
    runtime.setup()
    with lifecycle.user_errors():
        main(*cli.parse_args(make_parser(), TINY_PRESET))
