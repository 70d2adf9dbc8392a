"""Stage 1, SFT: full-parameter fine-tuning of the base model on a small slice of the chosen answers, so the policy
already speaks in the target style before PPO (InstructGPT's SFT step, Ouyang et al. 2022, arXiv:2203.02155).

    python train_sft.py --tiny                      # offline tiny preset on a CPU, well under a minute
    python train_sft.py                             # Qwen2.5-0.5B-Instruct on btfChinese-DPO-small, on a GPU
    python train_sft.py --config configs/sft.yaml   # every field is settable from YAML as well as the CLI

Writes the model and tokenizer to checkpoint/sft, TensorBoard scalars and their chart to tensorboard/sft/<time>
(sft.png).
"""

from dataclasses import dataclass, field

from trl import ModelConfig, SFTConfig, SFTTrainer

import common
from hfppo import charts, checkpoints, cli, errors, hints, lifecycle, outputs, paths, resuming, runtime, training

# The original run: "a small number of rude dialogues" (the first 10%), 2 epochs, 4 x 8 sequences per step.
DEFAULTS = dict(
    model_name_or_path=paths.DEFAULT_MODEL,
    output_dir=str(paths.SFT_DIR),
    num_train_epochs=2,
    per_device_train_batch_size=4,
    gradient_accumulation_steps=8,
    learning_rate=1e-5,
    max_length=500,
    logging_steps=1,
    report_to="tensorboard",
    activation_checkpointing=False,  # TRL turns it on; the original ran without it and 0.5B fits without it
    ddp_find_unused_parameters=False,  # every parameter gets a gradient: skip DDP's search for unused ones
    bf16=runtime.bf16_available(),
    dataloader_pin_memory=runtime.accelerator_available(),
)
# A CPU-sized run of the same recipe: a larger slice and a higher learning rate, so the tiny model learns the style in
# seconds.
TINY_PRESET = dict(
    model_name_or_path=str(paths.TINY_BASE_DIR),
    model_source="tiny",
    dataset_name=str(paths.SAMPLE_DATA),
    sft_fraction=0.5,
    num_train_epochs=6,
    per_device_train_batch_size=8,
    gradient_accumulation_steps=1,
    learning_rate=1e-3,
    lr_scheduler_type="cosine",
    warmup_steps=5,
    max_length=256,
    save_strategy="no",
)
CHART_TAGS = ["train/loss", "train/learning_rate", "train/grad_norm"]


@dataclass
class ScriptArguments(cli.StageArguments):
    sft_fraction: float = field(
        default=0.1,
        metadata={
            "help": "Fraction of the training rows (those --eval_fraction does not hold out), from the start of the "
            "dataset, to fine-tune on.",
            "range": "(0, 1]",
        },
    )


def report_truncation(trainer: SFTTrainer, rows, max_length: int) -> None:
    """Say how many rows SFTTrainer cuts at max_length (keeping their start) and how many it drops because the cut
    left no answer token to train on; stop if it dropped them all."""
    tokenizer = trainer.processing_class
    lengths = [len(tokenizer.apply_chat_template(row["prompt"] + row["completion"])["input_ids"]) for row in rows]
    longer = sum(length > max_length for length in lengths)
    dropped = len(rows) - len(trainer.train_dataset)
    if not len(trainer.train_dataset):
        raise errors.PipelineError(
            f"every one of the {len(rows)} rows has a prompt of --max_length {max_length} tokens or more, so no "
            "answer token is left to train on. Raise --max_length, or use shorter questions or --system_prompt."
        )
    if longer:
        trainer.accelerator.print(
            f"{longer} of {len(rows)} rows are longer than --max_length {max_length} tokens and are truncated to it"
            + (f"; SFTTrainer drops {dropped} of them, which keep no answer token." if dropped else ".")
        )


def main(script_args: ScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> None:
    training.check_report_to(training_args.report_to)  # before any model loads, as train_ppo.py does
    if model_args.use_peft:
        raise errors.PipelineError(
            "train_sft.py trains every parameter; LoRA belongs to the PPO stage. Drop --use_peft."
        )

    settings = resuming.check_trainer_run(
        script_args,
        training_args,
        model_args,
        {"model_name_or_path": model_args.model_name_or_path},
        "train_sft.py",
    )

    # Data first: a bad file fails in a second, before any download or write.
    data = common.load_preference_data(script_args.dataset_name, script_args.model_source)
    train_rows, held_out = common.split_held_out(data, script_args.eval_fraction)  # the same rows in every stage
    num_rows = int(len(train_rows) * script_args.sft_fraction)
    if num_rows == 0:
        raise errors.PipelineError(
            f"--sft_fraction {script_args.sft_fraction} of the {len(train_rows)} training rows selects no row."
        )
    train_dataset = train_rows.select(range(num_rows)).map(
        common.sft_example, fn_kwargs={"system_prompt": script_args.system_prompt}, remove_columns=data.column_names
    )

    model_path = common.resolve_model(
        model_args.model_name_or_path, script_args.model_source, flag="--model_name_or_path"
    )
    checkpoints.require_checkpoint(
        model_path, hints.base_model_remedy(model_path, "model_name_or_path"), "language model"
    )
    tokenizer = checkpoints.load_tokenizer(model_path, hints.base_model_remedy(model_path, "model_name_or_path"))
    common.refuse_control_tokens(data, script_args.dataset_name, tokenizer)  # the tokenizer SFTTrainer loads
    training_args.model_init_kwargs = dict(
        revision=model_args.model_revision, dtype=model_args.dtype, attn_implementation=model_args.attn_implementation
    ) | (training_args.model_init_kwargs or {})
    lifecycle.lock_output_dir(training_args.output_dir)
    run_dir = charts.tensorboard_run("sft")

    # Prompt-completion rows make SFTTrainer compute the loss on the answer only (completion_only_loss): Qwen2.5's
    # chat template has no {% generation %} markers, so assistant_only_loss could not find the answer.
    trainer = SFTTrainer(model=model_path, args=training_args, train_dataset=train_dataset)
    runtime.check_distributed(trainer.accelerator.state)  # a sharded config accelerate turned into another
    training.compact_progress(trainer)  # per-step values go to TensorBoard, not stdout
    trainer.accelerator.print(
        f"SFT of {model_path} on {num_rows} of {len(data)} rows of {script_args.dataset_name}, {len(held_out)} held "
        f"out; TensorBoard: {run_dir}"
    )
    if training_args.max_length is not None and not training_args.packing:
        report_truncation(trainer, train_dataset, training_args.max_length)
    result = training.train_stage(trainer, settings, training_args.resume_from_checkpoint)
    outputs.save_trainer_stage(trainer, held_out, script_args.system_prompt, result.metrics)

    if trainer.is_world_process_zero():
        curves = charts.curves_note(run_dir, CHART_TAGS, f"SFT: {model_path}", training_args.report_to)
        chat = hints.command(
            "eval_sft.py", script_args.tiny, model_path=hints.unless_default(training_args.output_dir, paths.SFT_DIR)
        )
        print(f"Model saved to {training_args.output_dir}{curves}. Chat with it: {chat}")


def make_parser() -> cli.Parser:
    parser = cli.Parser((ScriptArguments, SFTConfig, ModelConfig))
    parser.set_defaults(**DEFAULTS)
    return parser


if __name__ == "__main__":
    runtime.setup()
    with lifecycle.user_errors():
        main(*cli.parse_args(make_parser(), TINY_PRESET))
