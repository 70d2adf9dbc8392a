"""A local web page to ask every stage the same question and read their answers side by side, each scored by the
reward model and the lexicon judge.

    python chat_web.py --tiny                 # the tiny preset's checkpoints: open http://127.0.0.1:7863
    python chat_web.py                        # the real run's checkpoint/ folders and Qwen/Qwen2.5-0.5B-Instruct
    python chat_web.py --tiny --port 7870 --dpo_model_path /tmp/my_dpo

One column per model found: the base model (before SFT), then every policy of paths.POLICIES whose folder holds a
checkpoint; the others are listed on the page with the command that makes them. The page is served on 127.0.0.1
only: anyone who can reach the port can make this machine run the models, so another --host needs --allow_remote.
"""

import contextlib
import html
import math
import os
import string
import sys
import threading
import time
from collections.abc import Callable, Iterator
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
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
    set_seed,
)

import common  # noqa: E402
from hfppo import (  # noqa: E402
    adapters,
    cli,
    data_files,
    errors,
    hints,
    judge,
    lifecycle,
    paths,
    positions,
    runtime,
    sampling,
    tiny,
)

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
# The longest one question may hold the queue, every column's answer together: a question still generating then is
# cut, and the next one is served. Raise it where long answers of the real models on a slow CPU need more.
REQUEST_TIME_LIMIT_S = 300
# The page takes no files, but Gradio's upload route takes any file into its temporary folder: at 0 bytes it refuses
# every file that has any.
MAX_UPLOAD_BYTES = 0


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
    temperature: float = field(
        default=0.7,
        metadata={
            "help": "Sampling temperature at start, as in PPO's rollouts.",
            "range": f"[{cli.MIN_TEMPERATURE}, inf)",
        },
    )
    max_new_tokens: int = field(
        default=200, metadata={"help": "Longest answer at start, in tokens (PPO's).", "range": "[1, inf)"}
    )
    seed: int = field(
        default=42,
        metadata={
            "help": "Seed at start; every column samples from it, so each repeats.",
            "range": f"[0, {cli.MAX_SEED}]",
        },
    )
    num_examples: int = field(
        default=5,
        metadata={"help": "Example questions on the page, from the SFT model's held-out rows.", "range": "[0, inf)"},
    )
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Address to serve on. Anything but this machine's own needs --allow_remote."},
    )
    port: int = field(
        default=7863,
        metadata={
            "help": "Port to serve on: near Gradio's 7860 but not it, which another Gradio app takes first, and clear "
            "of TensorBoard (6006), Jupyter (8888) and the usual development servers (3000, 5000, 8000, 8080).",
            "range": f"[1, {cli.MAX_PORT}]",
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
    timed_out: bool = False  # cut at the page's REQUEST_TIME_LIMIT_S
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


class Stop(StoppingCriteria):
    """Ends a generation at its next token once `closed` is set (whoever asked is gone: the generator that streams
    the answer was closed) or at `deadline` (time.monotonic()); `timed_out` says the deadline did it."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.closed = threading.Event()
        self.timed_out = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.timed_out = self.timed_out or time.monotonic() >= self.deadline
        stop = self.closed.is_set() or self.timed_out
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


GENERATION_THREAD = "chat_web-generate"  # the name of the thread that samples an answer


def stream_answer(
    column: Column,
    question: str,
    system_prompt: str,
    answer: Answer,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    deadline: float,
) -> Iterator[Answer]:
    """Sample `column`'s answer as PPO's rollouts do (sampling.sampling_config, from `seed`), yielding `answer` as its
    text grows; its ids are filled in once generation ends. Generation stops at the next token when this generator is
    closed (Gradio closes it when its client goes) or at `deadline` (answer.timed_out)."""
    tokenizer = column.tokenizer
    answer.prompt_ids = common.prompt_ids(tokenizer, {"question": question}, system_prompt)
    input_ids = torch.tensor([answer.prompt_ids], device=column.model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop = Stop(deadline)
    output = {}

    def generate():
        try:  # everything in the thread: an error anywhere must end the stream, or the loop below waits forever
            set_seed(seed)  # in the thread that samples, right before it: the answer depends on the seed alone
            output["ids"] = column.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=sampling.sampling_config(tokenizer, max_new_tokens, temperature),
                stopping_criteria=StoppingCriteriaList([stop]),
                streamer=streamer,
            )
        except BaseException as error:  # raised again below; ending the stream stops the loop that waits on it
            output["error"] = error
            streamer.end()

    thread = threading.Thread(target=generate, name=GENERATION_THREAD, daemon=True)
    thread.start()
    try:
        for piece in streamer:
            answer.text += piece
            yield answer
    finally:  # also when closed at a yield: the thread stops at its next token, and nothing samples after this
        stop.closed.set()
        thread.join()
    answer.timed_out = stop.timed_out
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
    each time one grows. All of them together get REQUEST_TIME_LIMIT_S: the answer generating then is cut and scored,
    and a RequestError says so."""
    answers = [Answer() for _ in models.columns]
    deadline = time.monotonic() + REQUEST_TIME_LIMIT_S
    sampling_settings = (temperature, max_new_tokens, seed, deadline)
    for number, (column, answer) in enumerate(zip(models.columns, answers), 1):
        try:
            stream = stream_answer(column, question, system_prompt, answer, *sampling_settings)
            with contextlib.closing(stream):  # this generator closed (its client went): the column's is closed too
                for _ in stream:
                    yield answers
            score(models, column, answer)
        except Exception as error:  # any failure ends this question with a message; the next one is served
            raise RequestError(
                f"the {column.name} model failed on this question ({type(error).__name__}: {error}); the columns "
                "after it were not asked. The page is ready for the next question."
            ) from error
        yield answers
        if answer.timed_out:
            rest = ", and the columns after it were not asked" if number < len(answers) else ""
            raise RequestError(
                f"This question reached the page's limit of {REQUEST_TIME_LIMIT_S} s per question "
                f"(REQUEST_TIME_LIMIT_S in chat_web.py) in the {column.name} column: its answer is cut there{rest}. "
                "Ask for fewer Max new tokens. The page is ready for the next question."
            )


def max_answer_tokens(models: Models) -> float:
    """The most new tokens the page lets a question ask for: the shortest context of its models (none has positions
    beyond it), or no limit on a page without models, which asks none."""
    return min((column.model.config.max_position_embeddings for column in models.columns), default=math.inf)


def box_ranges(models: Models) -> dict[str, tuple[float, float]]:
    """The range of each sampling box, by the name of the field (and flag) that sets its start value."""
    return {"temperature": TEMPERATURE_RANGE, "max_new_tokens": (1, max_answer_tokens(models)), "seed": SEED_RANGE}


@dataclass
class Room:
    """How much text a question may bring: the fewest positions among the page's models, the most characters a token
    of theirs spells, and the count of a prompt's tokens (the most among their tokenizers). A text of more than
    positions x token_characters characters cannot fit, whatever it says: that is checked before it is tokenized."""

    positions: float
    token_characters: int
    prompt_tokens: Callable[[str, str], int]  # (question, system prompt) -> tokens of the prompt the models read

    @property
    def characters(self) -> float:
        return self.positions * self.token_characters


def room(models: Models) -> Room:
    """The page's Room: unbounded on a page without models, which asks none."""
    tokenizers = [column.tokenizer for column in models.columns]

    def prompt_tokens(question: str, system_prompt: str) -> int:
        row = {"question": question}
        return max((len(common.prompt_ids(tokenizer, row, system_prompt)) for tokenizer in tokenizers), default=0)

    return Room(max_answer_tokens(models), max(map(positions.longest_token, tokenizers), default=1), prompt_tokens)


def check_room(question: str, system_prompt: str, max_new_tokens: int, room: Room) -> None:
    """Refuse a question and system prompt whose prompt and answer cannot fit the models' positions: by characters
    first, which costs nothing whatever their length, then by the prompt's tokens."""
    characters = len(question) + len(system_prompt)
    if characters > room.characters:
        raise RequestError(
            f"The question and system prompt have {characters:,} characters together, more than the models' "
            f"{room.positions} positions can hold: at most {room.characters:,} characters ({room.token_characters} "
            "for the longest token). Shorten the question or the system prompt."
        )
    prompt = room.prompt_tokens(question, system_prompt)
    if prompt >= room.positions:
        raise RequestError(
            f"The question and system prompt make a prompt of {prompt:,} tokens, and the models have "
            f"{room.positions} positions for the prompt and the answer together. Shorten the question or the system "
            "prompt."
        )
    if prompt + max_new_tokens > room.positions:
        raise RequestError(
            f"The question and system prompt make a prompt of {prompt:,} tokens: with Max new tokens {max_new_tokens} "
            f"that is {prompt + max_new_tokens:,}, more than the models' {room.positions} positions. Lower Max new "
            f"tokens to {room.positions - prompt} or less, or shorten the question or the system prompt."
        )


@dataclass
class Request:
    """A question with its sampling settings, as the page's boxes (or Gradio's API) send them."""

    question: object
    system_prompt: object
    temperature: object
    max_new_tokens: object
    seed: object


def check_request(
    request: Request, ranges: dict[str, tuple[float, float]], room: Room
) -> tuple[str, str, float, int, int]:
    """(question, system prompt, temperature, max new tokens, seed) of `request`, or a RequestError that names the
    box and its range: every value is checked here, as the browser and the API both send it, before any model runs.
    An empty box is refused, never filled with a default the user does not see; a prompt and answer that cannot fit
    the models' positions (check_room) too."""
    if not isinstance(request.question, str) or not request.question.strip():
        raise RequestError("Type a question first, or click one of the held-out questions.")
    if not isinstance(request.system_prompt, str):
        raise RequestError(f"The system prompt must be text, got {request.system_prompt!r}.")
    for box, text in (("The question", request.question), ("The system prompt", request.system_prompt)):
        if problem := data_files.control_token_problem(text):
            raise RequestError(f"{box} {problem}. Remove it and ask again.")
    temperature, max_new_tokens, seed = (
        check_number(box, getattr(request, name), ranges[name], whole) for name, (box, whole) in BOXES.items()
    )
    check_room(request.question, request.system_prompt, max_new_tokens, room)
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
    cut = "" if answer.finished else " · cut at the time limit" if answer.timed_out else " · cut at max new tokens"
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
    """Refuse a --temperature, --max_new_tokens or --seed that its box would refuse at every question, and a
    --system_prompt that leaves no room for a question and an answer of --max_new_tokens."""
    for name, bounds in box_ranges(models).items():
        try:
            check_number(f"--{name}", getattr(args, name), bounds, whole=BOXES[name][1])
        except RequestError as error:
            raise errors.ArgumentError(
                f"{error} It starts the page's {BOXES[name][0]} box, which takes that range."
            ) from error
    try:
        check_room("", args.system_prompt, args.max_new_tokens, room(models))
    except RequestError as error:
        raise errors.ArgumentError(
            f"{error} (Before any question is typed: --system_prompt and --max_new_tokens start the page's boxes.)"
        ) from error


def max_length(room: Room) -> int | None:
    """The most characters a text box takes: the most the models' positions can hold (None: no limit)."""
    return None if math.isinf(room.characters) else int(room.characters)


def build_page(models: Models, args: WebArguments) -> gr.Blocks:
    text_room = room(models)
    with gr.Blocks(title="hf-ppo: every stage side by side", analytics_enabled=False) as page:
        gr.Markdown(
            "## hf-ppo: every stage side by side\nEach column samples an answer as PPO's rollouts do (temperature "
            "only, from the same seed), scored by the reward model (as PPO scores) and the lexicon judge "
            "(rude hits − polite hits of data/lexicon, which no stage trained on)."
        )
        with gr.Row():
            question = gr.Textbox(
                label="Question", placeholder="输入问题", scale=4, elem_id="question", max_length=max_length(text_room)
            )
            button = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
        gr.Examples([[q] for q in models.examples], inputs=[question], label="Held-out questions")
        with gr.Accordion("System prompt and sampling", open=False):
            system_prompt = gr.Textbox(
                value=args.system_prompt,
                label="System prompt",
                elem_id="system_prompt",
                max_length=max_length(text_room),
            )
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
                request = check_request(Request(*values), box_ranges(models), text_room)
                for answers in ask(models, *request):
                    yield [
                        value
                        for column, answer in zip(models.columns, answers)
                        for value in (answer.text, score_text(column, answer))
                    ]
            except RequestError as error:
                # One line on the console, not Gradio's traceback; the toast renders HTML: the message is escaped.
                print(f"Question not answered: {error}", file=sys.stderr, flush=True)
                raise gr.Error(html.escape(str(error)), print_exception=False) from None

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
        serve(page, args.host, args.port)
    except OSError as error:
        raise errors.PipelineError(
            f"cannot serve on {args.host}:{args.port}: another program probably uses that port (Gradio says: "
            f"{error}). Pass --port with another one, such as --port {args.port + 1}."
        ) from error


def serve(page: gr.Blocks, host: str, port: int, **options) -> None:
    """Serve `page` with Gradio's queue: every error event carries its message (show_error: by default Gradio sends
    null for an error of its own, such as a request missing a value), and no upload is taken (MAX_UPLOAD_BYTES)."""
    page.queue().launch(
        server_name=host,
        server_port=port,
        share=False,
        quiet=True,
        show_error=True,
        max_file_size=MAX_UPLOAD_BYTES,
        **options,
    )


def make_parser() -> cli.Parser:
    return cli.Parser(WebArguments)


if __name__ == "__main__":
    runtime.setup()
    with lifecycle.user_errors():
        main(*cli.parse_args(make_parser(), TINY_PRESET))
