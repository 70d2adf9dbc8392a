"""A local web page to ask every stage the same question and read their answers side by side, each scored by the
reward model and the lexicon judge.

    python chat_web.py --tiny                 # the tiny preset's checkpoints: open http://127.0.0.1:7863
    python chat_web.py                        # the real run's checkpoint/ folders and Qwen/Qwen2.5-0.5B-Instruct
    python chat_web.py --tiny --port 7870 --dpo_model_path /tmp/my_dpo

One column per model found: the base model (before SFT), then every policy of paths.POLICIES whose folder holds a
checkpoint; the others are listed on the page with the command that makes them. The page is served on 127.0.0.1
only: anyone who can reach the port can make this machine run the models, so another --host needs --allow_remote.
"""

import html
import math
import os
import string
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Gradio reports usage to its servers unless told not to, and reads this when it is imported; the page must make
# no request outside this machine (the Blocks' analytics_enabled=False below says it again).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    TextIteratorStreamer,
    set_seed,
)

import common  # noqa: E402
from hfppo import adapters, cli, errors, hints, judge, lifecycle, paths, runtime, sampling, tiny  # noqa: E402

# The models the --tiny stages write, and PPO's tiny answer length.
TINY_PRESET = dict(
    base_model_path=str(paths.TINY_BASE_DIR),
    model_source="tiny",
    max_new_tokens=tiny.TINY_RESPONSE_LENGTH,
)
# Hosts that only this machine reaches.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_PORT = 65535  # a TCP port is 16 bits
# Questions offered when the SFT model saved no held-out rows: the README's demo questions.
FALLBACK_QUESTIONS = ("吃了没?", "地球离太阳多远?", "推荐一本书")
REPLACEMENT_CHARACTER = "\ufffd"  # what a decoder makes of bytes that are not (yet) a whole UTF-8 character
ANSWER_LINES = 6  # the height of an answer box; longer answers scroll
# What the page accepts in each sampling box, the same from the browser and from Gradio's API (check_request reads
# every request; the boxes show the range). Temperature: the boxes' old minimum, far above where logits / temperature
# overflows float32 and sampling fails; above its maximum every token is nearly equally likely (the answer is noise).
TEMPERATURE_RANGE = (0.01, 10.0)
SEED_RANGE = (0, 2**32 - 1)  # numpy's, which set_seed seeds too: a seed outside it raises there
# The sampling boxes by field name: the label each is named by, and whether it takes whole numbers only.
BOXES = {"temperature": ("Temperature", False), "max_new_tokens": ("Max new tokens", True), "seed": ("Seed", True)}


@dataclass
class WebArguments:
    tiny: bool = field(default=False, metadata={"help": "Tiny preset: the models the --tiny stages wrote."})
    base_model_path: str = field(
        default=paths.DEFAULT_MODEL,
        metadata={"help": "The model before SFT, the first column: a local folder, or a model id to download."},
    )
    model_source: paths.ModelSource = field(
        default="modelscope", metadata={"help": "Where a base model that is not a local folder comes from."}
    )
    sft_model_path: str = field(default=str(paths.SFT_DIR), metadata={"help": "train_sft.py's output."})
    ppo_model_path: str = field(default=str(paths.PPO_DIR), metadata={"help": "train_ppo.py's output (an adapter)."})
    ppo_base_model_path: str = field(
        default=str(paths.PPO_BASE_DIR), metadata={"help": "train_ppo.py --from_base's output (an adapter)."}
    )
    dpo_model_path: str = field(default=str(paths.DPO_DIR), metadata={"help": "train_dpo.py's output."})
    grpo_model_path: str = field(default=str(paths.GRPO_DIR), metadata={"help": "train_grpo.py's output."})
    reward_model_path: str = field(
        default=str(paths.RM_DIR), metadata={"help": "The reward model that scores every answer, as in PPO."}
    )
    system_prompt: str = field(
        default=paths.DEFAULT_SYSTEM_PROMPT, metadata={"help": "The page's system prompt at start (editable there)."}
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature at start, as in PPO's rollouts."})
    max_new_tokens: int = field(default=200, metadata={"help": "Longest answer at start, in tokens (PPO's)."})
    seed: int = field(default=42, metadata={"help": "Seed at start; every column samples from it, so each repeats."})
    num_examples: int = field(
        default=5, metadata={"help": "Example questions on the page, from the SFT model's held-out rows."}
    )
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Address to serve on. Anything but this machine's own needs --allow_remote."},
    )
    port: int = field(
        default=7863,
        metadata={
            "help": "Port to serve on: near Gradio's 7860 but not it, which another Gradio app takes first, and clear "
            "of TensorBoard (6006), Jupyter (8888) and the usual development servers (3000, 5000, 8000, 8080)."
        },
    )
    allow_remote: bool = field(
        default=False,
        metadata={"help": "Serve on a --host other machines can reach: anyone who reaches it can run the models."},
    )
    allow_other_base: bool = field(default=False, metadata={"help": adapters.ALLOW_HELP})


@dataclass
class Column:
    """A model on the page: its name, where it came from, and what generates."""

    name: str
    path: str
    model: torch.nn.Module
    tokenizer: object
    reward_problem: str | None = None  # why its answers get no reward-model score, or None


@dataclass
class Answer:
    """One column's answer to a question: its text and token ids, and the scores once it is done."""

    text: str = ""
    prompt_ids: list[int] = field(default_factory=list)
    answer_ids: list[int] = field(default_factory=list)
    finished: bool = False  # stopped at its end-of-turn token, not cut at max_new_tokens
    reward: float | None = None
    done: bool = False


class RequestError(errors.PipelineError):
    """A question the page refuses or could not answer: shown to whoever asked, and the page goes on."""


@dataclass
class Models:
    """Everything the page serves, loaded once at start."""

    columns: list[Column]
    missing: dict[str, str]  # name -> why it has no column: the error, with the command that makes it
    reward_model: torch.nn.Module | None
    reward_tokenizer: object | None
    examples: list[str]


def check_host(args: WebArguments) -> None:
    """Refuse an address other machines can reach unless --allow_remote says that is meant, and a port that is none."""
    if not 1 <= args.port <= MAX_PORT:
        raise errors.ArgumentError(f"--port must be in [1, {MAX_PORT}], got {args.port}.")
    if args.host not in LOCAL_HOSTS and not args.allow_remote:
        raise errors.ArgumentError(
            f"--host {args.host} would let every machine that reaches this one's port {args.port} use the page, and "
            "the page runs the models for whoever asks (it has no login): the page serves on 127.0.0.1 unless told "
            f"otherwise. To reach it from your own computer, forward the port (ssh -L {args.port}:127.0.0.1:"
            f"{args.port} this-machine) and open http://127.0.0.1:{args.port}; to serve it to your network anyway, "
            f"add --allow_remote."
        )


def policy_path(args: WebArguments, name: str) -> str:
    return getattr(args, paths.METHODS[name].flag)


def load_models(args: WebArguments) -> Models:
    """The base model, every policy of paths.POLICIES that exists, the reward model and the example questions.
    A model that is missing or cannot be loaded is listed with the reason, and the page goes on without it."""
    columns, missing = [], {}

    print(f"Loading base: {args.base_model_path}", flush=True)
    try:
        base_path = common.resolve_model(args.base_model_path, args.model_source, False, "--base_model_path")
        remedy = hints.base_model_remedy(base_path, "base_model_path")
        columns.append(Column("base", base_path, *common.load_model(AutoModelForCausalLM, base_path, remedy)))
    except errors.PipelineError as error:
        missing["base"] = str(error)

    folders = {name: policy_path(args, name) for name in paths.POLICIES}
    found, not_found = common.find_policies(folders, args.tiny)
    missing |= {name: f"no model at {folders[name]}. Make it first: {command}" for name, command in not_found.items()}
    for name, path in found.items():
        print(f"Loading {name}: {path}", flush=True)
        try:
            maker = hints.policy_command(name, path, args.tiny)
            model, tokenizer = common.load_policy(path, maker, args.tiny, args.allow_other_base)
        except errors.PipelineError as error:
            missing[name] = str(error)
            continue
        # An adapter comes back unmerged on a model of its own (load_policy loads its base afresh for each), so
        # merging changes no other column; merged, it generates as fast as a plain model (sampling.merged).
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        columns.append(Column(name, path, model, tokenizer))

    reward_model = reward_tokenizer = reward_problem = None
    rm_command = hints.reward_model_command(args.reward_model_path, args.tiny)
    print(f"Loading the reward model: {args.reward_model_path}", flush=True)
    try:
        reward_model, reward_tokenizer = common.load_model(
            AutoModelForSequenceClassification, args.reward_model_path, rm_command, "reward model"
        )
        common.check_pad_token(reward_tokenizer, args.reward_model_path, reward_model)
    except errors.PipelineError as error:
        reward_model = reward_tokenizer = None
        reward_problem = f"no reward-model score: {error}"
    for column in columns:
        column.reward_problem = reward_problem
        try:  # the reward model reads the policy's token ids, as in PPO: one tokenizer for both
            if reward_tokenizer is not None:
                where = f"the reward model ({args.reward_model_path})"
                common.check_same_tokenizer(column.tokenizer, reward_tokenizer, where, column.path)
        except errors.PipelineError as error:
            column.reward_problem = f"no reward-model score: {error}"

    return Models(columns, missing, reward_model, reward_tokenizer, example_questions(args))


def example_questions(args: WebArguments) -> list[str]:
    """The first questions the SFT model held out (paths.HELD_OUT_FILE): none of the stages trained on them."""
    held_out = Path(args.sft_model_path) / paths.HELD_OUT_FILE
    if not held_out.is_file():
        return list(FALLBACK_QUESTIONS[: args.num_examples])
    try:
        _, rows = common.evaluation_data(None, args.sft_model_path, args.model_source)
    except errors.PipelineError as error:  # the page goes on without them, as without a model it cannot load
        print(f"The README's questions instead of the SFT model's held-out ones: {error}", flush=True)
        return list(FALLBACK_QUESTIONS[: args.num_examples])
    return list(dict.fromkeys(rows["question"]))[: args.num_examples]


def stream_answer(
    column: Column,
    question: str,
    system_prompt: str,
    answer: Answer,
    temperature: float,
    max_new_tokens: int,
    seed: int,
) -> Iterator[Answer]:
    """Sample `column`'s answer as PPO's rollouts do (sampling.sampling_config, from `seed`), yielding `answer` as its
    text grows; its ids are filled in once generation ends."""
    tokenizer = column.tokenizer
    answer.prompt_ids = common.prompt_ids(tokenizer, {"question": question}, system_prompt)
    input_ids = torch.tensor([answer.prompt_ids], device=column.model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    output = {}

    def generate():
        try:  # everything in the thread: an error anywhere must end the stream, or the loop below waits forever
            set_seed(seed)  # in the thread that samples, right before it: the answer depends on the seed alone
            output["ids"] = column.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=sampling.sampling_config(tokenizer, max_new_tokens, temperature),
                streamer=streamer,
            )
        except BaseException as error:  # raised again below; ending the stream stops the loop that waits on it
            output["error"] = error
            streamer.end()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    for piece in streamer:
        answer.text += piece
        yield answer
    thread.join()
    if "error" in output:
        raise output["error"]
    responses, lengths = sampling.cut_after_stop(
        output["ids"][:, input_ids.shape[1] :], tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    answer.answer_ids = responses[0, : lengths[0]].tolist()
    answer.finished = bool(answer.answer_ids) and answer.answer_ids[-1] == tokenizer.eos_token_id
    answer.text = answer_text(tokenizer, answer.answer_ids, answer.finished)


def answer_text(tokenizer, answer_ids: list[int], finished: bool) -> str:
    """The text as PPO's answer_texts decodes it, from all the answer's ids at once (a character whose bytes span
    two tokens comes out whole): up to its stop token, without special tokens. An answer cut at max_new_tokens may
    end inside a character, whose first bytes decode as U+FFFD: that broken character is left out."""
    text = tokenizer.decode(answer_ids, skip_special_tokens=True)
    return text if finished else text.rstrip(REPLACEMENT_CHARACTER)


def score(models: Models, column: Column, answer: Answer) -> None:
    """The reward model's score of prompt + answer ids, read at the answer's last token as PPO reads it
    (common.reward_model_fn: common.reward_scores), without PPO's penalty for an answer cut short."""
    if column.reward_problem is None:
        reward_fn = common.reward_model_fn(models.reward_model, models.reward_tokenizer, batch_size=1)
        answer.reward = reward_fn([answer.prompt_ids], [answer.answer_ids])[0].item()
    answer.done = True


def ask(
    models: Models, question: str, system_prompt: str, temperature: float, max_new_tokens: int, seed: int
) -> Iterator[list[Answer]]:
    """Every column's answer to `question`, one column after another (the models share the CPU or GPU, and one
    global random generator: answers sampled at once would take each other's random numbers). Yields all the answers
    each time one grows."""
    answers = [Answer() for _ in models.columns]
    for column, answer in zip(models.columns, answers):
        try:
            for _ in stream_answer(column, question, system_prompt, answer, temperature, max_new_tokens, seed):
                yield answers
            score(models, column, answer)
        except Exception as error:  # any failure ends this question with a message; the next one is served
            raise RequestError(
                f"the {column.name} model failed on this question ({type(error).__name__}: {error}); the columns "
                "after it were not asked. The page is ready for the next question."
            ) from error
        yield answers


def max_answer_tokens(models: Models) -> float:
    """The most new tokens the page lets a question ask for: the shortest context of its models (none has positions
    beyond it), or no limit on a page without models, which asks none."""
    return min((column.model.config.max_position_embeddings for column in models.columns), default=math.inf)


def box_ranges(models: Models) -> dict[str, tuple[float, float]]:
    """The range of each sampling box, by the name of the field (and flag) that sets its start value."""
    return {"temperature": TEMPERATURE_RANGE, "max_new_tokens": (1, max_answer_tokens(models)), "seed": SEED_RANGE}


@dataclass
class Request:
    """A question with its sampling settings, as the page's boxes (or Gradio's API) send them."""

    question: object
    system_prompt: object
    temperature: object
    max_new_tokens: object
    seed: object


def check_request(request: Request, ranges: dict[str, tuple[float, float]]) -> tuple[str, str, float, int, int]:
    """(question, system prompt, temperature, max new tokens, seed) of `request`, or a RequestError that names the
    box and its range: every value is checked here, as the browser and the API both send it, before any model runs.
    An empty box is refused, never filled with a default the user does not see."""
    if not isinstance(request.question, str) or not request.question.strip():
        raise RequestError("Type a question first, or click one of the held-out questions.")
    if not isinstance(request.system_prompt, str):
        raise RequestError(f"The system prompt must be text, got {request.system_prompt!r}.")
    temperature, max_new_tokens, seed = (
        check_number(box, getattr(request, name), ranges[name], whole) for name, (box, whole) in BOXES.items()
    )
    return request.question, request.system_prompt, temperature, max_new_tokens, seed


def check_number(box: str, value: object, bounds: tuple[float, float], whole: bool) -> float | int:
    """`value` of the box named `box` as a number in `bounds` (a whole one where `whole`), or a RequestError."""
    kind = "a whole number" if whole else "a number"
    wanted = f"{kind} from {bounds[0]} to {bounds[1]}"
    if value is None or value == "":
        raise RequestError(f"{box} is empty: type {wanted}.")
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (number and bounds[0] <= value <= bounds[1] and (not whole or value == int(value))):
        raise RequestError(f"{box} must be {wanted}, got {value!r}.")
    return int(value) if whole else float(value)


def score_text(column: Column, answer: Answer) -> str:
    """The line under an answer: the reward model's score and the lexicon judge's verdict, once it is done."""
    if not answer.done:
        return "…" if answer.text else ""
    reward = f"reward **{answer.reward:+.3f}**" if answer.reward is not None else as_text(column.reward_problem)
    cut = "" if answer.finished else " · cut at max new tokens"
    return f"{reward} · {as_text(judge.judge_summary(answer.text))}{cut}"


def as_text(text: str) -> str:
    """`text` (from a file, a model or an error) as Markdown that shows it as it is: every ASCII punctuation mark
    backslash-escaped, as CommonMark allows for each, so no HTML tag, image, link or emphasis in it becomes one."""
    return "".join(f"\\{char}" if char in string.punctuation else char for char in text)


def missing_text(models: Models) -> str:
    if not models.missing:
        return ""
    lines = "\n".join(f"- **{as_text(name)}**: {as_text(why)}" for name, why in models.missing.items())
    return f"Not on the page (no checkpoint, or one that could not be loaded):\n\n{lines}"


def info(bounds: tuple[float, float]) -> str:
    return f"from {bounds[0]} to {bounds[1]}"


def check_start_values(args: WebArguments, models: Models) -> None:
    """Refuse a --temperature, --max_new_tokens or --seed that its box would refuse at every question."""
    for name, bounds in box_ranges(models).items():
        try:
            check_number(f"--{name}", getattr(args, name), bounds, whole=BOXES[name][1])
        except RequestError as error:
            raise errors.ArgumentError(
                f"{error} It starts the page's {BOXES[name][0]} box, which takes that range."
            ) from error


def build_page(models: Models, args: WebArguments) -> gr.Blocks:
    with gr.Blocks(title="hf-ppo: every stage side by side", analytics_enabled=False) as page:
        gr.Markdown(
            "## hf-ppo: every stage side by side\nEach column samples an answer as PPO's rollouts do (temperature "
            "only, from the same seed), scored by the reward model (as PPO scores) and the lexicon judge "
            "(rude hits − polite hits of data/lexicon, which no stage trained on)."
        )
        with gr.Row():
            question = gr.Textbox(label="Question", placeholder="输入问题", scale=4, elem_id="question")
            button = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
        gr.Examples([[q] for q in models.examples], inputs=[question], label="Held-out questions")
        with gr.Accordion("System prompt and sampling", open=False):
            system_prompt = gr.Textbox(value=args.system_prompt, label="System prompt", elem_id="system_prompt")
            with gr.Row():
                # No minimum, maximum or precision here: Gradio would refuse or round a value before check_request
                # sees it, without naming the box. The range is shown under each box instead.
                temperature = gr.Number(value=args.temperature, label="Temperature", info=info(TEMPERATURE_RANGE))
                max_new_tokens = gr.Number(
                    value=args.max_new_tokens, label="Max new tokens", info=info(box_ranges(models)["max_new_tokens"])
                )
                seed = gr.Number(value=args.seed, label="Seed", info=info(SEED_RANGE))
        outputs = []
        with gr.Row():
            for column in models.columns:
                with gr.Column(min_width=200):
                    outputs.append(
                        gr.Textbox(
                            label=f"{column.name}: {paths.METHODS[column.name].description}",
                            lines=ANSWER_LINES,
                            interactive=False,
                            elem_id=f"answer-{column.name}",
                        )
                    )
                    # No LaTeX: text that holds $$ is shown as it is (as_text escapes the Markdown, not KaTeX's).
                    outputs.append(gr.Markdown(elem_id=f"score-{column.name}", latex_delimiters=[]))
        gr.Markdown(missing_text(models), elem_id="missing", latex_delimiters=[])

        def on_ask(*values):
            try:
                request = check_request(Request(*values), box_ranges(models))
                for answers in ask(models, *request):
                    yield [
                        value
                        for column, answer in zip(models.columns, answers)
                        for value in (answer.text, score_text(column, answer))
                    ]
            except RequestError as error:  # the toast renders HTML: the message is escaped to show as text
                raise gr.Error(html.escape(str(error))) from error

        inputs = [question, system_prompt, temperature, max_new_tokens, seed]
        # One question at a time, from whichever tab or event: every request shares the models and the seeded
        # random generator (see `ask`); Gradio's queue holds the others until it is their turn.
        for event in (button.click, question.submit):
            event(on_ask, inputs, outputs, concurrency_limit=1, concurrency_id="models")
    return page


def main(args: WebArguments) -> None:
    check_host(args)
    runtime.require_one_process("chat_web.py")
    models = load_models(args)
    check_start_values(args, models)
    page = build_page(models, args)
    print(f"Serving {', '.join(c.name for c in models.columns)} on http://{args.host}:{args.port} (Ctrl-C stops).")
    try:
        page.queue().launch(server_name=args.host, server_port=args.port, share=False, quiet=True)
    except OSError as error:
        raise errors.PipelineError(
            f"cannot serve on {args.host}:{args.port}: another program probably uses that port (Gradio says: "
            f"{error}). Pass --port with another one, such as --port {args.port + 1}."
        ) from error


def make_parser() -> cli.Parser:
    return cli.Parser(WebArguments)


if __name__ == "__main__":
    runtime.setup()
    with lifecycle.user_errors():
        main(*cli.parse_args(make_parser(), TINY_PRESET))
