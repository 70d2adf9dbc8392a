"""Merge a stage's LoRA adapter into the model it was trained on, and write a standalone model: safetensors weights,
the tokenizer with its chat template, and a generation_config.json that samples as the pipeline does. It loads with
AutoModelForCausalLM.from_pretrained alone, without peft, in any tool that reads a Hugging Face model.

    python export.py --tiny                      # checkpoint/ppo on checkpoint/sft -> checkpoint/ppo_merged
    python export.py --tiny --method dpo         # checkpoint/dpo -> checkpoint/dpo_merged (or ppo_base, grpo)
    python export.py --method grpo --output_dir qwen-rude --dtype bfloat16      # half the size, for serving on a GPU
    python eval_sft.py --tiny --model_path checkpoint/ppo_merged                # chat with the result

The base is the model the adapter's adapter_config.json names (base_model_name_or_path), as every script loads it,
and must be the model the adapter was trained on (adapter_base.json), unless --allow_other_base.
The merge runs on the CPU in float32 and the result is cast to --dtype once. The adapter's held_out.jsonl is copied
beside the model.
"""

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

import common
from hfppo import adapters, checkpoints, cli, errors, hints, lifecycle, outputs, paths, runtime, sampling, tiny

# The tiny stages' answer length, for the generation config.
TINY_PRESET = dict(max_new_tokens=tiny.TINY_RESPONSE_LENGTH)
# The methods that train a LoRA adapter: every trained policy but SFT, which is a whole model.
ADAPTER_METHODS = [name for name in paths.POLICIES if name != "sft"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MERGED_SUFFIX = "_merged"  # the default --output_dir: checkpoint/ppo -> checkpoint/ppo_merged


@dataclass
class ExportArguments:
    method: str = field(
        default="ppo",
        metadata={
            "help": "The stage whose adapter to merge: its default folder, and the command a missing one needs.",
            "choices": ADAPTER_METHODS,
        },
    )
    adapter_path: str | None = field(
        default=None, metadata={"help": "The LoRA adapter to merge. Unset: the method's folder (checkpoint/ppo)."}
    )
    output_dir: str | None = field(
        default=None, metadata={"help": f"Where to write the model. Unset: <adapter_path>{MERGED_SUFFIX}."}
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32",
        metadata={"help": "float32 keeps the merge as computed; bfloat16 or float16 halve the size, for serving."},
    )
    max_new_tokens: int = field(
        default=200,
        metadata={
            "help": "generation_config.json's longest answer, in tokens (PPO's response_length).",
            "range": "[1, inf)",
        },
    )
    temperature: float = field(
        default=0.7,
        metadata={
            "help": "generation_config.json's sampling temperature, as in PPO's rollouts.",
            "range": f"[{cli.MIN_TEMPERATURE}, inf)",
        },
    )
    tiny: bool = field(
        default=False, metadata={"help": "Tiny preset: the tiny stages' answer length, and --tiny in the hints."}
    )
    allow_other_base: bool = field(default=False, metadata={"help": adapters.ALLOW_HELP})


def check_adapter(path: Path, maker: str) -> str:
    """The model the adapter at `path` was trained on, after checking that `path` holds a complete LoRA adapter (a
    whole model has nothing to merge); `maker` is the command that writes it."""
    checkpoints.require_checkpoint(path, maker)
    kind = checkpoints.model_kind(path)
    if kind != "adapter":
        what = {"language model": "a whole language model", "reward model": "a reward model"}.get(
            kind, "a whole model"
        )
        raise errors.PipelineError(
            f"--adapter_path {path} is {what}, not a LoRA adapter: there is nothing to merge"
            + (", and AutoModelForCausalLM.from_pretrained loads it as it is" if kind == "language model" else "")
            + f". Pass an adapter folder, such as the one this writes: {maker}"
        )
    return common.adapter_base(path, maker)


def merged_model(adapter: Path, base: str, maker: str, base_maker: str, dtype: str):
    """The adapter folded into its base's weights by peft (merge_and_unload), in float32 whatever the base was saved
    in, then cast to `dtype`: the merged weights are rounded once."""
    with checkpoints.loading(base, base_maker):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with checkpoints.loading(adapter, maker):
        # safe_merge: weights that are NaN or inf (a damaged file) fail here, not in whatever serves the model
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload(safe_merge=True)
    return merged.to(DTYPES[dtype])


def main(args: ExportArguments) -> None:
    runtime.require_one_process("export.py")
    # Only unset means the default: an empty flag is the current folder, which the checks refuse.
    adapter = Path(paths.METHODS[args.method].folder if args.adapter_path is None else args.adapter_path)
    output_dir = Path(f"{adapter}{MERGED_SUFFIX}" if args.output_dir is None else args.output_dir)

    # Every input, then the output folder, checked before anything loads.
    maker = hints.policy_command(args.method, adapter, args.tiny)
    base = check_adapter(adapter, maker)
    start = paths.METHODS[args.method].start
    # PPO from the base fetches or builds its base model itself: running it again makes both.
    base_maker = hints.policy_command(start, base, args.tiny) if start in paths.POLICIES else maker
    checkpoints.require_checkpoint(base, base_maker, "language model")
    adapters.check_base(adapter, base, args.allow_other_base, maker)
    inputs = {"adapter_path": adapter, "adapter_path's base": base}
    outputs.check_output_dir(output_dir, inputs, checkpoints.save_size(base), "export.py")
    lifecycle.lock_output_dir(output_dir)

    tokenizer = checkpoints.load_tokenizer(adapter, maker)  # the stage's own, with its chat template
    model = merged_model(adapter, base, maker, base_maker, args.dtype)
    # The pipeline's sampling, not the base's: Qwen's top_k 20, top_p 0.8 and repetition penalty 1.05 are off in
    # every stage's sampling (sampling.sampling_config), so the model would answer otherwise than it was evaluated.
    model.generation_config = sampling.sampling_config(tokenizer, args.max_new_tokens, args.temperature)
    with checkpoints.staged_save(output_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        held_out = adapter / paths.HELD_OUT_FILE
        if held_out.is_file():  # compare.py then still refuses it on questions it trained on
            shutil.copy(held_out, staging)
    chat = hints.command("eval_sft.py", args.tiny, model_path=output_dir)
    print(
        f"{adapter} merged into {base} and saved to {output_dir} ({args.dtype}): it loads with "
        f"AutoModelForCausalLM.from_pretrained, without peft. Chat with it: {chat}"
    )


def make_parser() -> cli.Parser:
    return cli.Parser(ExportArguments)


if __name__ == "__main__":
    runtime.setup()
    with lifecycle.user_errors():
        main(*cli.parse_args(make_parser(), TINY_PRESET))
