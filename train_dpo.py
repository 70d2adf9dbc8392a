"""DPO: the SFT model with a LoRA adapter learns the preferences straight from the chosen / rejected pairs, with no
reward model and no sampling: the loss -log sigmoid(beta x (chosen's log-ratio - rejected's log-ratio)), each
log-ratio the policy's log-probability of the answer over the reference's (Direct Preference Optimization, Rafailov
et al. 2023, arXiv:2305.18290). The reference is the SFT model itself: TRL's DPOTrainer computes it by switching the
adapter off, so no second copy of the model is held.

    python train_dpo.py --tiny                      # offline tiny preset on a CPU, after train_sft.py --tiny
    python train_dpo.py                             # Qwen2.5-0.5B-Instruct, after train_sft.py, on a GPU
    python train_dpo.py --beta 0.3 --num_train_epochs 1     # every field is a flag (--help), or YAML via --config

Writes the LoRA adapter and tokenizer to checkpoint/dpo (on the SFT model its adapter_config.json names, as PPO's), the
held-out pairs beside them, TensorBoard scalars and their chart to tensorboard/dpo/<time> (dpo.png): the implicit
rewards beta x log-ratio of the chosen and rejected answers, their margin and the share of pairs ranked right, on the
training batches and on the held-out pairs. Compare it with the other methods: compare.py.
"""

from dataclasses import dataclass, field
from pathlib import Path

from accelerate import init_empty_weights
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM
from trl import DPOConfig, DPOTrainer, ModelConfig, get_peft_config

import common
from hfppo import charts, checkpoints, cli, errors, hints, lifecycle, lora, outputs, paths, resuming, runtime, training

# The original's recipe of the other stages (2 epochs, 4 x 8 pairs per step, max length 500), TRL's DPO loss (sigmoid,
# beta 0.1), and the LoRA every RL method trains (common.LORA_*, PPO's: rank 32, alpha 8; dropout 0, as PPO, since
# DPOTrainer turns dropout off in the model anyway, disable_dropout). Learning rate: PPO's for the same adapter, 5e-6;
# TRL's 1e-6 is meant for every parameter.
DEFAULTS = dict(
    output_dir=str(paths.DPO_DIR),
    num_train_epochs=2,
    per_device_train_batch_size=4,
    gradient_accumulation_steps=8,
    learning_rate=5e-6,
    max_length=500,
    eval_strategy="steps",
    eval_steps=0.1,  # a fraction of the run: ten held-out evaluations whatever the dataset size
    eval_on_start=True,  # and one before the first step, where the margin is 0: the curves start at the SFT model
    logging_steps=1,
    report_to="tensorboard",
    activation_checkpointing=False,  # TRL turns it on; a LoRA on 0.5B fits without it, as PPO runs
    bf16=runtime.bf16_available(),
    dataloader_pin_memory=runtime.accelerator_available(),
    use_peft=True,
    lora_r=lora.LORA_R,
    lora_alpha=lora.LORA_ALPHA,
    lora_dropout=0.0,
    lora_target_modules=list(lora.LORA_TARGET_MODULES),
)
# A CPU-sized run on the tiny SFT model: one pass over the 310 training pairs, at a learning rate that moves the tiny
# model's held-out margin in seconds without overfitting (at 3e-3 the training loss reached 0.002 while the held-out
# loss rose again after a quarter of the run; at 1e-3 it falls at every evaluation), and held-out evaluations at the
# start and the end only (each costs about what two training steps do).
TINY_PRESET = dict(
    model_source="tiny",
    dataset_name=str(paths.SAMPLE_DATA),
    num_train_epochs=1,
    per_device_train_batch_size=8,
    gradient_accumulation_steps=1,
    learning_rate=1e-3,
    lr_scheduler_type="cosine",
    warmup_steps=3,
    max_length=256,
    eval_strategy="epoch",
    save_strategy="no",
)
# DPOTrainer's own metrics (dpo_trainer.py, _compute_loss): rewards/* are beta x log(policy / reference) of answers.
CHART_TAGS = [
    "train/loss", "train/rewards/margins", "train/rewards/accuracies",
    "eval/loss", "eval/rewards/margins", "eval/rewards/accuracies",
]  # fmt: skip


@dataclass
class ScriptArguments(cli.StageArguments):
    sft_model_path: str = field(
        default=str(paths.SFT_DIR),
        metadata={"help": "The SFT model: the adapter's frozen base, and the reference (the adapter switched off)."},
    )


def report_truncation(num_rows: int, pairs: Dataset, max_length: int, split: str) -> str | None:
    """What DPOTrainer did with the pairs longer than max_length (its collator cuts each sequence to max_length,
    keeping the start; its dataset preparation drops the pairs whose prompt alone fills it), as a line to print;
    a PipelineError if it dropped them all. `pairs` are the tokenized pairs it kept of `num_rows`."""
    dropped = num_rows - len(pairs)
    if not len(pairs):
        raise errors.PipelineError(
            f"every one of the {num_rows} {split} pairs has a prompt of --max_length {max_length} tokens or more, so "
            "no answer token is left to compare. Raise --max_length, or use shorter questions or --system_prompt"
            + (", or --eval_fraction 0 to hold none out." if split == "held-out" else ".")
        )
    longer = sum(
        len(prompt) + max(len(chosen), len(rejected)) > max_length
        for prompt, chosen, rejected in zip(pairs["prompt_ids"], pairs["chosen_ids"], pairs["rejected_ids"])
    )
    if not (longer or dropped):
        return None
    return (
        f"{longer + dropped} of {num_rows} {split} pairs are longer than --max_length {max_length} tokens: "
        + (f"{longer} truncated to it" if longer else "")
        + ("; " if longer and dropped else "")
        + (f"{dropped} dropped, their prompt alone that long." if dropped else ".")
    )


def main(script_args: ScriptArguments, training_args: DPOConfig, model_args: ModelConfig) -> None:
    training.check_report_to(training_args.report_to)  # before any model loads, as train_ppo.py does
    if model_args.model_name_or_path is not None:
        raise errors.ArgumentError(
            "train_dpo.py starts from the SFT model, which is also its reference: pass it as --sft_model_path, not "
            "--model_name_or_path."
        )
    if model_args.use_peft and training_args.sync_ref_model:
        raise errors.ArgumentError(
            "--sync_ref_model updates a separate reference model, and with --use_peft (the default) the reference is "
            "the SFT model under the adapter, switched off. Drop --sync_ref_model, or add --use_peft false to train "
            "every parameter against a second copy of the SFT model."
        )
    settings = resuming.check_trainer_run(
        script_args,
        training_args,
        model_args,
        {"sft_model_path": script_args.sft_model_path},
        "train_dpo.py",
    )

    # Data first: a bad file fails in a second, before any model loads.
    data = common.load_preference_data(script_args.dataset_name, script_args.model_source)
    train_rows, held_out = common.split_held_out(data, script_args.eval_fraction)  # the same rows in every stage
    if not len(held_out):
        training_args.eval_strategy = "no"
        training_args.eval_on_start = False

    sft_command = hints.policy_command("sft", script_args.sft_model_path, script_args.tiny)
    checkpoints.require_checkpoint(script_args.sft_model_path, sft_command, "language model")
    # An SFT model that trained on this run's held-out questions would flatter DPO in the comparison on them.
    saved_as = Path(training_args.output_dir) / paths.HELD_OUT_FILE
    common.check_same_held_out(held_out, saved_as, script_args.sft_model_path, "SFT model", "--sft_model_path")

    tokenizer = checkpoints.load_tokenizer(script_args.sft_model_path, sft_command)
    common.refuse_control_tokens(data, script_args.dataset_name, tokenizer)
    if model_args.use_peft:  # DPOTrainer loads the model: its layers from an empty (meta-device) copy, in no time
        with init_empty_weights():
            layers = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(script_args.sft_model_path))
        lora.check_target_modules(layers, model_args.lora_target_modules, script_args.sft_model_path)
    to_pairs = dict(fn_kwargs={"system_prompt": script_args.system_prompt}, remove_columns=data.column_names)
    train_dataset = train_rows.map(common.dpo_example, **to_pairs)
    eval_dataset = held_out.map(common.dpo_example, **to_pairs) if len(held_out) else None
    training_args.model_init_kwargs = dict(
        revision=model_args.model_revision, dtype=model_args.dtype, attn_implementation=model_args.attn_implementation
    ) | (training_args.model_init_kwargs or {})
    lifecycle.lock_output_dir(training_args.output_dir)
    run_dir = charts.tensorboard_run("dpo")

    # With a peft_config DPOTrainer wraps the SFT model in a fresh adapter (B = 0: the policy starts as the SFT model)
    # and, given no ref_model, computes the reference log-probs with the adapter disabled (dpo_trainer.py,
    # compute_ref_log_probs / use_adapter(model, None)). With --use_peft false it loads a second, frozen copy.
    trainer = DPOTrainer(
        model=script_args.sft_model_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    runtime.check_distributed(trainer.accelerator.state)  # a sharded config accelerate turned into another
    training.compact_progress(trainer)  # per-step values go to TensorBoard, not stdout
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.accelerator.print(
        f"DPO of {script_args.sft_model_path} on {len(train_dataset)} pairs of {script_args.dataset_name}, "
        f"{len(held_out)} held out, {trainable:,} trained parameters "
        f"({'LoRA' if model_args.use_peft else 'every one'}); TensorBoard: {run_dir}"
    )
    if training_args.max_length is not None:
        for rows, pairs, split in ((train_rows, trainer.train_dataset, "training"),) + (
            ((held_out, trainer.eval_dataset, "held-out"),) if eval_dataset is not None else ()
        ):
            line = report_truncation(len(rows), pairs, training_args.max_length, split)
            if line:
                trainer.accelerator.print(line)
    result = training.train_stage(trainer, settings, training_args.resume_from_checkpoint)
    outputs.save_trainer_stage(trainer, held_out, script_args.system_prompt, result.metrics)

    if trainer.is_world_process_zero():
        curves = charts.curves_note(run_dir, CHART_TAGS, f"DPO: {script_args.sft_model_path}", training_args.report_to)
        compare = hints.command(
            "compare.py",
            script_args.tiny,
            dpo_model_path=hints.unless_default(training_args.output_dir, paths.DPO_DIR),
            sft_model_path=hints.unless_default(script_args.sft_model_path, paths.SFT_DIR),
        )
        what = "Adapter" if model_args.use_peft else "Model"
        print(f"{what} saved to {training_args.output_dir}{curves}. Compare the methods: {compare}")


def make_parser() -> cli.Parser:
    parser = cli.Parser((ScriptArguments, DPOConfig, ModelConfig))
    parser.set_defaults(**DEFAULTS)
    return parser


if __name__ == "__main__":
    runtime.setup()
    with lifecycle.user_errors():
        main(*cli.parse_args(make_parser(), TINY_PRESET))
