"""Chat with the PPO model: the SFT model with the PPO adapter merged in. Every method compared on the held-out
questions is compare.py.

    python eval_ppo.py --tiny                        # interactive: 输入问题: ... until Ctrl-D / Ctrl-C
    python eval_ppo.py --tiny --question 吃了没?     # one or more --question, then exit (or one per stdin line)
"""

import argparse
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, set_seed
from transformers.hf_argparser import string_to_bool

import common
from hfppo import (
    adapters,
    checkpoints,
    cli,
    console,
    errors,
    hints,
    lifecycle,
    paths,
    positions,
    runtime,
    sampling,
    tiny,
)

# The tiny preset's answer length.
TINY_PRESET = dict(max_new_tokens=tiny.TINY_RESPONSE_LENGTH)
# The comparison's script since it left this one: eval_ppo.py --compare runs it, for one version (forward_comparison).
COMPARE_SCRIPT = "compare.py"


@dataclass
class EvalArguments:
    ppo_model_path: str = field(
        default=str(paths.PPO_DIR),
        # --model_path, as in the other eval scripts, is the same flag: the name every script before this one took.
        metadata={"help": "The PPO checkpoint (a LoRA adapter).", "aliases": ["--model_path"]},
    )
    sft_model_path: str = field(
        default=str(paths.SFT_DIR), metadata={"help": "The SFT model the adapter was trained on."}
    )
    tiny: bool = field(default=False, metadata={"help": "Tiny preset: the models the --tiny stages wrote."})
    compare: bool = field(
        default=False,
        metadata={
            "help": f"Runs {COMPARE_SCRIPT}, the comparison's script now, with the other flags (this version only)."
        },
    )
    question: list[str] = field(
        default_factory=list,
        metadata={"help": "Answer this question and exit; repeat the flag for several.", "action": "extend"},
    )
    system_prompt: str = field(
        default=paths.DEFAULT_SYSTEM_PROMPT, metadata={"help": "For questions without their own, as in training."}
    )
    max_new_tokens: int = field(
        default=200, metadata={"help": "Longest answer, in tokens (PPO's response_length).", "range": "[1, inf)"}
    )
    temperature: float = field(
        default=0.7,
        metadata={"help": "Sampling temperature, as in PPO's rollouts.", "range": f"[{cli.MIN_TEMPERATURE}, inf)"},
    )
    seed: int = field(
        default=42, metadata={"help": "Every model samples from this seed.", "range": f"[0, {cli.MAX_SEED}]"}
    )
    batch_size: int = field(
        default=8, metadata={"help": "Answers generated and scored per forward pass.", "range": "[1, inf)"}
    )
    allow_other_base: bool = field(default=False, metadata={"help": adapters.ALLOW_HELP})


def load_ppo(args: EvalArguments) -> tuple[PeftModel, object]:
    """The SFT model with the PPO adapter on it (unmerged: disable_adapter() gives back the SFT model)."""
    ppo_command = hints.command(
        "train_ppo.py",
        args.tiny,
        output_dir=hints.hint_output_dir(args.ppo_model_path, paths.PPO_DIR, hints.WRITES["train_ppo.py"]),
    )
    checkpoints.require_checkpoint(args.ppo_model_path, ppo_command, "adapter")
    trained_on = common.adapter_base(args.ppo_model_path, ppo_command)
    if Path(trained_on).resolve() != Path(args.sft_model_path).resolve():
        raise errors.PipelineError(
            f"the adapter at {args.ppo_model_path} was trained on {trained_on}, not on --sft_model_path "
            f"{args.sft_model_path}. Pass --sft_model_path {trained_on}."
        )
    sft_command = hints.policy_command("sft", args.sft_model_path, args.tiny)
    checkpoints.require_checkpoint(args.sft_model_path, sft_command, "language model")
    adapters.check_base(args.ppo_model_path, args.sft_model_path, args.allow_other_base, ppo_command)
    sft, tokenizer = common.load_model(AutoModelForCausalLM, args.sft_model_path, sft_command, "language model")
    with checkpoints.loading(args.ppo_model_path, ppo_command):
        return PeftModel.from_pretrained(sft, args.ppo_model_path).eval(), tokenizer


def sample(
    model, tokenizer, prompts: list[list[int]], args: EvalArguments, progress: str | None = None
) -> dict[str, torch.Tensor]:
    return sampling.generate(
        model, tokenizer, prompts, args.max_new_tokens, args.temperature, args.batch_size, model.device, progress
    )


def chat(args: EvalArguments) -> None:
    ppo, tokenizer = load_ppo(args)
    model = ppo.merge_and_unload()  # one set of weights: generation runs at the SFT model's speed
    limit = positions.fewest_positions({f"the SFT model ({args.sft_model_path})": model})
    empty = common.prompt_ids(tokenizer, {"question": ""}, args.system_prompt)
    positions.check_question(len(empty), args.max_new_tokens, limit)  # no question can fit: said before any is asked
    set_seed(args.seed)
    try:
        for question in console.read_questions(args.question):
            prompt = common.prompt_ids(tokenizer, {"question": question}, args.system_prompt)
            positions.check_question(len(prompt), args.max_new_tokens, limit)
            batch = sample(model, tokenizer, [prompt], args)
            answer = batch["responses"][0, : batch["lengths"][0]]
            print("---模型输出---")
            print(tokenizer.decode(answer, skip_special_tokens=True).strip(), flush=True)
    except KeyboardInterrupt:
        print()


def comparison_command(args: list[str]) -> list[str] | None:
    """The compare.py command that `args` (eval_ppo.py's flags) ask for with --compare, or None where they do not:
    every flag kept, in order, but --compare and its value if it has one (--compare, --compare true, --compare=1).
    --compare false, a bad value (the parser names it) and compare: true in a --config file stay eval_ppo.py's."""
    for i, arg in enumerate(args):
        flag, equals, value = arg.partition("=")
        if flag != "--compare":
            continue
        # As argparse reads a flag of nargs="?": its value after "=", or the next word unless that is a flag
        separate = not equals and i + 1 < len(args) and not args[i + 1].startswith("-")
        value = args[i + 1] if separate else value if equals else "true"
        try:
            if not string_to_bool(value):
                return None
        except argparse.ArgumentTypeError:
            return None
        rest = args[:i] + args[i + (2 if separate else 1) :]
        return [hints.python_command(), str(Path(sys.argv[0]).with_name(COMPARE_SCRIPT)), *rest]
    return None


def forward_comparison(args: list[str]) -> None:
    """eval_ppo.py --compare, for one version: say once that the comparison is now compare.py, with the command, and
    run that in this process's place (os.execv: the exit status and Ctrl-C are compare.py's own)."""
    command = comparison_command(args)
    if command is None:
        return
    print(f"note: the comparison is now {COMPARE_SCRIPT}; running {shlex.join(command)}", flush=True)
    os.execv(sys.executable, [sys.executable, *command[1:]])


def main(args: EvalArguments) -> None:
    runtime.require_one_process("eval_ppo.py")
    if args.compare:  # only from a --config file: a --compare flag runs compare.py before parsing (forward_comparison)
        raise errors.ArgumentError(
            f"--config sets compare: true, and the comparison is now {COMPARE_SCRIPT}: eval_ppo.py only chats. Run "
            f"python {COMPARE_SCRIPT} with that file without the key, or remove the key to chat."
        )
    chat(args)


def make_parser() -> cli.Parser:
    return cli.Parser(EvalArguments)


if __name__ == "__main__":
    runtime.setup()
    with lifecycle.user_errors():
        forward_comparison(sys.argv[1:])
        main(*cli.parse_args(make_parser(), TINY_PRESET))
