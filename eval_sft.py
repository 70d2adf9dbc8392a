"""Chat with the SFT model.

python eval_sft.py --tiny                        # interactive: 输入问题: ... until Ctrl-D / Ctrl-C
python eval_sft.py --tiny --question 吃了没?     # one or more --question, then exit
echo 吃了没? | python eval_sft.py --tiny         # one question per stdin line when stdin is not a terminal
"""

from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, set_seed

import common
from hfppo import cli, console, hints, lifecycle, paths, positions, runtime

# The tiny model answers in a few dozen tokens; Qwen gets room for a paragraph.
TINY_PRESET = dict(max_new_tokens=64)


@dataclass
class EvalArguments:
    model_path: str = field(default=str(paths.SFT_DIR), metadata={"help": "The SFT checkpoint to chat with."})
    tiny: bool = field(
        default=False, metadata={"help": "Tiny preset: settings for the model train_sft.py --tiny wrote."}
    )
    question: list[str] = field(
        default_factory=list,
        metadata={"help": "Answer this question and exit; repeat the flag for several.", "action": "extend"},
    )
    system_prompt: str = field(
        default=paths.DEFAULT_SYSTEM_PROMPT, metadata={"help": "System prompt, as in training."}
    )
    max_new_tokens: int = field(default=512, metadata={"help": "Longest answer, in tokens.", "range": "[1, inf)"})
    do_sample: bool | None = field(
        default=None, metadata={"help": "Sample (true) or decode greedily (false); unset: the model's own setting."}
    )
    temperature: float | None = field(
        default=None,
        metadata={"help": "Unset: the model's generation_config.json.", "range": f"[{cli.MIN_TEMPERATURE}, inf)"},
    )
    top_p: float | None = field(
        default=None, metadata={"help": "Unset: the model's generation_config.json.", "range": "(0, 1]"}
    )
    seed: int = field(
        default=42, metadata={"help": "Seed for sampling, so a run can be repeated.", "range": f"[0, {cli.MAX_SEED}]"}
    )


@torch.no_grad()
def answer(model, tokenizer, question: str, args: EvalArguments) -> str:
    prompt = common.prompt_ids(tokenizer, {"question": question}, args.system_prompt)
    positions.check_question(len(prompt), args.max_new_tokens, positions.fewest_positions({model_name(args): model}))
    input_ids = torch.tensor([prompt])
    sampling = {k: v for k in ("do_sample", "temperature", "top_p") if (v := getattr(args, k)) is not None}
    output = model.generate(
        input_ids.to(model.device),
        attention_mask=torch.ones_like(input_ids).to(model.device),
        max_new_tokens=args.max_new_tokens,
        **sampling,
    )
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()


def model_name(args: EvalArguments) -> str:
    return f"the model ({args.model_path})"


def main(args: EvalArguments) -> None:
    runtime.require_one_process("eval_sft.py")
    command = hints.policy_command("sft", args.model_path, args.tiny)
    model, tokenizer = common.load_model(AutoModelForCausalLM, args.model_path, command, "language model")
    empty = common.prompt_ids(tokenizer, {"question": ""}, args.system_prompt)  # no question can fit: said first
    positions.check_question(len(empty), args.max_new_tokens, positions.fewest_positions({model_name(args): model}))
    set_seed(args.seed)

    try:
        for question in console.read_questions(args.question):
            text = answer(model, tokenizer, question, args)  # refused before the header, if it cannot fit
            print("---模型输出---")
            print(text, flush=True)
    except KeyboardInterrupt:
        print()


def make_parser() -> cli.Parser:
    return cli.Parser(EvalArguments)


if __name__ == "__main__":
    runtime.setup()
    with lifecycle.user_errors():
        main(*cli.parse_args(make_parser(), TINY_PRESET))
