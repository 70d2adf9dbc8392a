"""Chat with the SFT model.

python eval_sft.py --tiny                        # interactive: 输入问题: ... until Ctrl-D / Ctrl-C
python eval_sft.py --tiny --question 吃了没?     # one or more --question, then exit
echo 吃了没? | python eval_sft.py --tiny         # one question per stdin line when stdin is not a terminal
"""

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, set_seed

import common
from hfppo import cli, errors, hints, lifecycle, paths, runtime

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
    max_new_tokens: int = field(default=512, metadata={"help": "Longest answer, in tokens."})
    do_sample: bool | None = field(
        default=None, metadata={"help": "Sample (true) or decode greedily (false); unset: the model's own setting."}
    )
    temperature: float | None = field(default=None, metadata={"help": "Unset: the model's generation_config.json."})
    top_p: float | None = field(default=None, metadata={"help": "Unset: the model's generation_config.json."})
    seed: int = field(default=42, metadata={"help": "Seed for sampling, so a run can be repeated."})


NOT_UTF8 = "stdin must be UTF-8 text"  # said by both ways of reading it


def read_questions(cli_questions: list[str]) -> Iterator[str]:
    """--question flags if given, else a prompt loop on a terminal, else one question per stdin line.

    Each question is shown after the prompt `输入问题:`, typed there on a terminal, echoed otherwise.
    """
    if not cli_questions and sys.stdin.isatty():
        while True:
            try:
                question = input("输入问题:")
            except (EOFError, KeyboardInterrupt):
                print()
                return
            except UnicodeDecodeError:  # typed on a terminal in another encoding: it can be typed again
                print(f"That line is not UTF-8 ({NOT_UTF8}); type it again.", file=sys.stderr)
                continue
            if question.strip():
                yield question
    else:
        for question in cli_questions or (line.strip() for line in stdin_lines() if line.strip()):
            print(f"输入问题:{question}")
            yield question


def stdin_lines() -> Iterator[str]:
    """stdin's lines, decoded as UTF-8 whatever the locale says. A line that is not UTF-8 stops the questions with
    its line number and byte offset: skipping it would answer a list the user did not give, and a file in another
    encoding (GBK, say) would have every Chinese line skipped."""
    offset = 0
    for number, line in enumerate(sys.stdin.buffer, 1):
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise errors.PipelineError(
                f"stdin line {number} is not UTF-8 (byte {offset + error.start} of stdin, {error.reason}); the "
                f"questions before it were answered. {NOT_UTF8}: convert the file first, e.g. iconv -f GBK -t "
                "UTF-8 questions.txt > questions-utf8.txt."
            ) from error
        offset += len(line)


@torch.no_grad()
def answer(model, tokenizer, question: str, args: EvalArguments) -> str:
    input_ids = torch.tensor([common.prompt_ids(tokenizer, {"question": question}, args.system_prompt)])
    sampling = {k: v for k in ("do_sample", "temperature", "top_p") if (v := getattr(args, k)) is not None}
    output = model.generate(
        input_ids.to(model.device),
        attention_mask=torch.ones_like(input_ids).to(model.device),
        max_new_tokens=args.max_new_tokens,
        **sampling,
    )
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()


def main(args: EvalArguments) -> None:
    runtime.require_one_process("eval_sft.py")
    command = hints.policy_command("sft", args.model_path, args.tiny)
    model, tokenizer = common.load_model(AutoModelForCausalLM, args.model_path, command, "language model")
    set_seed(args.seed)

    try:
        for question in read_questions(args.question):
            print("---模型输出---")
            print(answer(model, tokenizer, question, args), flush=True)
    except KeyboardInterrupt:
        print()


def make_parser() -> cli.Parser:
    return cli.Parser(EvalArguments)


if __name__ == "__main__":
    runtime.setup()
    with lifecycle.user_errors():
        main(*cli.parse_args(make_parser(), TINY_PRESET))
