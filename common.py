"""What every stage must do identically to be correct: data loading and the held-out split, chat formatting, model
resolution and loading, reward scoring. The machinery around them lives in the hfppo package.

    python -c "import common; from hfppo import paths; print(common.load_preference_data(paths.SAMPLE_DATA))"
"""

import hashlib
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import torch
from accelerate import PartialState
from datasets import Dataset
from peft import PeftModel
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfppo import adapters, checkpoints, data_files, errors, hints, paths, runtime, sampling, tiny

# ----------------------------------------------------------------------------------------------------------------
# Data


def load_preference_data(name: str | Path, source: paths.ModelSource = "modelscope") -> Dataset:
    """Load question/chosen/rejected(/system) rows from a local file or folder, ModelScope, or the Hugging Face hub.

    Every row is validated; `system` is optional and comes back as "" when missing or empty.
    """
    path = Path(name)
    if path.is_dir():
        return data_files.validate(data_files.read_folder(path), path)
    if data_files.is_data_file(path):
        if not path.is_file():
            raise errors.PipelineError(f"dataset file {path} does not exist. Check --dataset_name.")
        return data_files.validate(data_files.read_file(path), path)
    if source == "modelscope":
        from modelscope import dataset_snapshot_download

        folder = _download(dataset_snapshot_download, name, "dataset", "ModelScope", cache_dir=str(paths.BASE_DIR))
        return data_files.validate(data_files.read_folder(Path(folder)), name)
    if source == "hf":
        from datasets import load_dataset

        dataset = _download(load_dataset, name, "dataset", "the Hugging Face hub", split="train")
        return data_files.validate(data_files.numbered(dataset), name)
    raise errors.PipelineError(
        f"dataset {name!r} is not a local file or folder, and --model_source {source} cannot download it. "
        f"Pass a {'/'.join(data_files.DATA_SUFFIXES)} file, or --model_source modelscope / hf for a hub dataset id."
    )


def _download(fetch, name: str, kind: str, hub: str, **kwargs):
    try:
        return fetch(name, **kwargs)
    except Exception as error:  # the hub clients raise many types; the user needs the same advice for all
        raise errors.PipelineError(
            f"{kind} {name!r} is not a local path and could not be downloaded from {hub} ({type(error).__name__}: "
            f"{error}). Check the name, or pass a local path; offline, run with --tiny."
        ) from error


def question_rank(question: str) -> int:
    """A stable pseudo-random rank of a question: the first 8 bytes of its SHA-256. Not Python's hash(), which is
    salted per process (PYTHONHASHSEED), so the rank is the same in every stage, process and run."""
    return int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big")


def split_held_out(data: Dataset, eval_fraction: float) -> tuple[Dataset, Dataset]:
    """(training rows, held-out rows) of `data`, the same in every stage: the held-out rows are those of the
    questions of lowest rank, taken until they hold ceil(eval_fraction x rows) rows.

    The split depends on the data and `eval_fraction` only (not --seed, not another stage having run), so no stage
    trains on a row another stage holds out (issue 13: PPO's held-out questions used to include rows SFT trained on).
    Every row of a question falls on one side, so a repeated question cannot leak, also where it is spelled
    otherwise: questions are compared as `data_files.normalised` writes them (NFKC, whitespace and invisible
    characters left out). A question's rank is the lowest `question_rank` of its spellings, so data without such
    twins splits as before. A larger fraction holds out a superset of a smaller one's rows. Both parts keep the
    data's order (SFT's --sft_fraction takes the first training rows).
    """
    needed = math.ceil(len(data) * eval_fraction)
    questions = [data_files.normalised(question) for question in data["question"]]
    rows_of = Counter(questions)
    rank_of = {}
    for spelling, question in zip(data["question"], questions):
        rank = (question_rank(spelling), spelling)
        rank_of[question] = min(rank_of.get(question, rank), rank)
    held_questions, held = set(), 0
    for question in sorted(rows_of, key=rank_of.__getitem__):
        if held >= needed:
            break
        held_questions.add(question)
        held += rows_of[question]
    if held >= len(data):
        raise errors.PipelineError(
            f"--eval_fraction {eval_fraction} of {len(data)} rows (questions repeated in several rows stay together) "
            "leaves none to train on. Lower --eval_fraction, or use more rows."
        )
    sides = [question in held_questions for question in questions]
    return (
        data.select([i for i, side in enumerate(sides) if not side]),
        data.select([i for i, side in enumerate(sides) if side]),
    )


def check_same_held_out(held_out: Dataset, saved_as: Path, other_model: str | Path, role: str, flag: str) -> None:
    """Refuse a model trained with another held-out split than `held_out` (this run's, to be saved as `saved_as`):
    one of the two stages trained on questions the other holds out, and the held-out comparison would flatter it. A
    model without HELD_OUT_FILE (trained elsewhere, or with --eval_fraction 0) is not checked."""
    theirs = Path(other_model) / paths.HELD_OUT_FILE
    if not theirs.is_file():
        return
    own_questions = set(held_out["question"])
    their_questions = set(load_preference_data(theirs)["question"])
    if own_questions != their_questions:
        raise errors.PipelineError(
            f"the {role} ({flag} {other_model}) was trained with another held-out split than this run's: {theirs} "
            f"and this run's split (saved as {saved_as}) hold different questions "
            f"({len(their_questions - own_questions)} only in the first, {len(own_questions - their_questions)} only "
            "in the second), so one stage trained on questions the other holds out. Train every stage on the same "
            f"--dataset_name with the same --eval_fraction: retrain the {role}, or run this with the --eval_fraction "
            "and --dataset_name it was trained with."
        )


def evaluation_data(
    dataset_name: str | None, model_path: str | Path, source: paths.ModelSource
) -> tuple[str, Dataset]:
    """(name, rows) an eval script scores: `dataset_name` if given, else the held-out rows saved beside the model."""
    dataset = dataset_name or str(Path(model_path) / paths.HELD_OUT_FILE)
    if dataset_name is None and not Path(dataset).is_file():
        raise errors.PipelineError(
            f"{model_path} holds no held-out rows ({paths.HELD_OUT_FILE}): it was trained holding none out "
            "(eval_fraction 0) or by another tool. Pass --dataset_name with data to evaluate on."
        )
    return dataset, load_preference_data(dataset, source)


# ----------------------------------------------------------------------------------------------------------------
# Chat formatting: the one place that turns a row into messages, so every stage sees the same text.


def prompt_messages(row: dict, system_prompt: str) -> list[dict]:
    """System + user turns. A row's own non-empty `system` wins over the run's `--system_prompt`."""
    return [
        {"role": "system", "content": row.get("system") or system_prompt},
        {"role": "user", "content": row["question"]},
    ]


def sft_example(row: dict, system_prompt: str, answer_column: str = "chosen") -> dict:
    """Conversational prompt-completion: SFTTrainer then puts the loss on the completion (the answer) only."""
    return {
        "prompt": prompt_messages(row, system_prompt),
        "completion": [{"role": "assistant", "content": row[answer_column]}],
    }


def dpo_example(row: dict, system_prompt: str) -> dict:
    """Conversational prompt / chosen / rejected, the preference format DPOTrainer renders with the chat template:
    the prompt every stage builds, each answer one assistant turn."""
    return {
        "prompt": prompt_messages(row, system_prompt),
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
    }


def conversation_ids(tokenizer, row: dict, system_prompt: str, answer: str) -> list[int]:
    """Token ids of system + user + assistant `answer`, ending at the answer's end-of-turn token (eos, `<|im_end|>`).

    This is the sequence a reward model scores, and its last token is where every stage reads the score (see
    `reward_scores`). The chat template's text after eos (Qwen's "\n") is cut, so RM training pairs end exactly where
    a policy's sampled answer stops.
    """
    messages = prompt_messages(row, system_prompt) + [{"role": "assistant", "content": answer}]
    ids = tokenizer.apply_chat_template(messages)["input_ids"]
    if tokenizer.eos_token_id not in ids:
        raise errors.PipelineError(
            f"the chat template does not end an assistant turn with the eos token {tokenizer.eos_token!r}, so there "
            "is no token to read the reward at. Train the reward model with train_rm.py --eos_token set to the "
            "template's end-of-turn token (<|im_end|> for Qwen)."
        )
    return ids[: len(ids) - ids[::-1].index(tokenizer.eos_token_id)]


def rm_example(row: dict, tokenizer, system_prompt: str) -> dict:
    """The chosen and rejected conversations as token ids, the pre-tokenized pair format RewardTrainer trains on."""
    return {
        "chosen_ids": conversation_ids(tokenizer, row, system_prompt, row["chosen"]),
        "rejected_ids": conversation_ids(tokenizer, row, system_prompt, row["rejected"]),
    }


def refuse_control_tokens(data: Dataset, source, tokenizer) -> None:
    """Refuse rows of `data` (as load_preference_data returned them, in the data's order) that hold one of the
    tokenizer's control tokens, naming the row and column: typed into text, such a token would forge a turn. Every
    stage calls this where its data meets its tokenizer. Loading refuses the ChatML form already (data_files.validate),
    with the row's line; this adds the special tokens of any other tokenizer ([INST], <s>)."""
    tokens = data_files.control_tokens(tokenizer)
    for where, row in data_files.numbered(data):
        for column in (*data_files.REQUIRED_COLUMNS, "system"):
            if problem := data_files.control_token_problem(row[column], tokens):
                raise errors.PipelineError(
                    f"{source}: {where} (counting rows from 1) column {column!r} {problem}. "
                    + data_files.CONTROL_TOKEN_REMEDY
                )


def check_same_tokenizer(tokenizer, other, where: str, policy_path: str) -> None:
    """Refuse a model whose tokenizer is not the policy's: the RL stages feed the policy's token ids straight to the
    reward model (and PPO's critic), and the comparison measures every method's answers in the SFT model's tokens."""
    special_tokens = (tokenizer.eos_token, tokenizer.pad_token)
    if other.get_vocab() != tokenizer.get_vocab() or (other.eos_token, other.pad_token) != special_tokens:
        raise errors.PipelineError(
            f"the tokenizer of {where} differs from the policy's ({policy_path}): vocabulary or eos/pad tokens. The "
            "policy's token ids go straight to the reward model and the critic, so every model must share one "
            "tokenizer: train them from the same base model."
        )


def check_pad_token(tokenizer, where: str, model=None) -> None:
    """A reward model reads its score at the last token that is not padding, and that token must be eos: with
    pad == eos the answer's own `<|im_end|>` would count as padding and the score would move to the token before it.
    A model given must find padding by the tokenizer's pad id."""
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise errors.PipelineError(
            f"the tokenizer of {where} has pad token {tokenizer.pad_token!r} and eos token {tokenizer.eos_token!r}. "
            "The reward is read at the last non-pad token, the answer's eos, so pad must be a token of the vocabulary "
            "other than eos: train the reward model with train_rm.py --pad_token set to one (Qwen's <|endoftext|>)."
        )
    if model is not None and model.config.pad_token_id != tokenizer.pad_token_id:
        raise errors.PipelineError(
            f"{where}: the model's config.pad_token_id is {model.config.pad_token_id} but its tokenizer pads with "
            f"{tokenizer.pad_token!r} (id {tokenizer.pad_token_id}), so the reward would be read at the wrong token. "
            "Set pad_token_id in its config.json to the tokenizer's pad id."
        )


# The longest conversation the reward model trains on and scores, in tokens, by default: train_rm.py's and
# eval_rm.py's --max_length.
REWARD_MAX_LENGTH = 500


@torch.no_grad()
def reward_scores(
    model, tokenizer, sequences: list[list[int]], batch_size: int | None = None, progress: str | None = None
) -> torch.Tensor:
    """Reward-model scores of token sequences (each ending at its answer's eos, see `conversation_ids`), in batches of
    `batch_size` (unset: one batch), with a progress bar titled `progress` if given.

    Right padding, as RewardTrainer's collator: positions and causal attention of the real tokens are then the same
    as unpadded, so a sequence scores the same alone or next to longer ones. The sequence-classification head reads
    the last token that is not `config.pad_token_id`, i.e. the answer's eos, in training, evaluation and PPO alike.
    """
    batch_size = batch_size or len(sequences)
    scores = []
    for i in tqdm(range(0, len(sequences), batch_size), progress, disable=progress is None):
        input_ids, attention_mask = sampling.padded(sequences[i : i + batch_size], tokenizer.pad_token_id, "right")
        logits = model(input_ids.to(model.device), attention_mask=attention_mask.to(model.device)).logits
        scores.append(logits[:, 0].float())
    return torch.cat(scores)


def reward_model_fn(reward_model, tokenizer, batch_size: int, missing_eos_penalty: float = 0.0) -> sampling.RewardFn:
    """The reward model's score of each prompt + answer (token ids), read at the answer's last token (reward_scores),
    in batches: the same token RewardTrainer trained on and eval_rm.py scores; minus `missing_eos_penalty` where that
    token is not the stop token (sampling.penalised). GRPO passes its penalty here; PPO passes none and subtracts its
    own in sampling.score_answers, which scores with any reward function, and the comparison and the page none."""

    def score(queries: list[list[int]], answers: list[list[int]]) -> torch.Tensor:
        sequences = [query + answer for query, answer in zip(queries, answers)]
        scores = reward_scores(reward_model, tokenizer, sequences, batch_size)
        stopped = torch.tensor([bool(answer) and answer[-1] == tokenizer.eos_token_id for answer in answers])
        return sampling.penalised(scores, stopped.to(scores.device), missing_eos_penalty)

    return score


def prompt_ids(tokenizer, row: dict, system_prompt: str) -> list[int]:
    """Token ids of system + user + the assistant generation prompt: what a policy answers from."""
    return tokenizer.apply_chat_template(prompt_messages(row, system_prompt), add_generation_prompt=True)["input_ids"]


# The longest prompt (system prompt + question, in the chat template), in tokens, by default: train_ppo.py's
# --max_prompt_length, and compare.py's, which skips the same questions.
MAX_PROMPT_LENGTH = 512


def prompts_within(
    tokenizer, rows: Dataset, system_prompt: str, max_prompt_length: int, log: Callable[[str], None] = print
) -> tuple[list[list[int]], Dataset]:
    """The prompt ids of the rows whose prompt is at most `max_prompt_length` tokens, and those rows; the others are
    skipped and counted. Training and compare.py both take their questions through here."""
    prompts = [prompt_ids(tokenizer, row, system_prompt) for row in rows]
    kept = [i for i, prompt in enumerate(prompts) if len(prompt) <= max_prompt_length]
    if not kept:
        raise errors.PipelineError(
            f"all {len(prompts)} questions make a prompt longer than --max_prompt_length {max_prompt_length} tokens "
            f"(the shortest has {min(map(len, prompts))}), so none is left. Raise --max_prompt_length, or use "
            "shorter questions or a shorter --system_prompt."
        )
    if len(kept) < len(prompts):
        log(
            f"Skipped {len(prompts) - len(kept)} of {len(prompts)} questions whose prompt is longer than "
            f"--max_prompt_length {max_prompt_length} tokens."
        )
    return [prompts[i] for i in kept], rows.select(kept)


# ----------------------------------------------------------------------------------------------------------------
# Models


def resolve_model(
    name_or_path: str | Path, source: paths.ModelSource, rebuild_stale: bool = True, flag: str | None = None
) -> str:
    """A local folder is used as is; otherwise download it (ModelScope or the HF hub) or build the tiny model in its
    own folder (paths.TINY_BASE_DIR). `flag` names the setting in the message for a missing folder elsewhere.

    Another missing folder under --tiny is refused, never built: a mistyped path would otherwise get a new model, and
    the run would train on it in silence (a critic that should have started from the reward model, say). The tiny
    base is built where it is missing, and built again where another recipe built it (stale_tiny_base), for
    the stages that train from it. The others (`rebuild_stale=False`: PPO's critic and --from_base policy, the
    comparison, the page) read it beside models trained from it: a new one would discard the base those models came
    from, then be refused by them (another tokenizer), so they use it as it is.
    """
    path = Path(name_or_path)
    if path.is_dir() and not (source == "tiny" and tiny.stale_tiny_base(path)):
        return str(path)
    if source == "tiny":
        if not path.is_dir() and path.resolve() != paths.TINY_BASE_DIR.resolve():
            raise errors.PipelineError(
                f"{f'{flag} ' if flag else ''}{path}: there is no model there, and the tiny preset builds its base "
                f"model only in its own folder, {paths.TINY_BASE_DIR}, never at a path given. Pass a folder that "
                f"holds a model, or leave {flag or 'it'} unset for the tiny base."
            )
        return built_tiny_base(path, rebuild_stale)
    if source == "modelscope":
        from modelscope import snapshot_download

        return _download(snapshot_download, str(name_or_path), "model", "ModelScope", cache_dir=str(paths.BASE_DIR))
    if source == "hf":
        from huggingface_hub import snapshot_download

        return _download(
            snapshot_download, str(name_or_path), "model", "the Hugging Face hub", cache_dir=str(paths.BASE_DIR)
        )
    raise errors.PipelineError(
        f"unknown --model_source {source!r}; choose one of {', '.join(get_args(paths.ModelSource))}."
    )


def load_model(model_class, path: str | Path, command: str, role: str | None = None):
    """A stage's checkpoint for inference: (model in eval mode, on the GPU if there is one; its tokenizer)."""
    path = checkpoints.require_checkpoint(path, command, role)
    # Not dtype="auto": that loads Qwen's bf16 weights as bf16, many times slower on a CPU without bf16 units.
    dtype = torch.bfloat16 if runtime.bf16_available() else torch.float32
    with checkpoints.loading(path, command):  # a file damaged in a way the checks of require_checkpoint cannot see
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = model_class.from_pretrained(path, dtype=dtype)
    checkpoints.check_finite(path, model.named_parameters(), command)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tokenizer


def find_policies(folders: dict[str, str | Path], tiny: bool) -> tuple[dict[str, str], dict[str, str]]:
    """Of `folders` ({method of POLICIES: its folder}): ({method: folder} of those holding a model, in POLICIES' order;
    {method: the command that makes it} of the others). A damaged checkpoint counts as found, so that loading it
    says what is wrong."""
    found, missing = {}, {}
    for name in paths.POLICIES:
        path = Path(folders[name])
        if (
            checkpoints.checkpoint_problem(path) != "no model"
            or checkpoints.sibling(path, checkpoints.READY).exists()
            or checkpoints.sibling(path, checkpoints.OLD).exists()
        ):
            found[name] = str(path)
        else:
            missing[name] = hints.policy_command(name, path, tiny)
    return found, missing


def load_policy(path: str | Path, maker: str, tiny: bool, allow_other_base: bool = False):
    """A trained policy for inference, (model, tokenizer): a whole causal LM, or a LoRA adapter on the model its
    adapter_config.json names (policy_base), left unmerged so that disable_adapter() gives that model back (the
    reference). `maker` is the command that writes `path`; `tiny` goes into the hint for a missing model under the
    adapter; `allow_other_base` accepts a model other than the one the adapter was trained on."""
    path = checkpoints.require_checkpoint(path, maker)
    base = policy_base(path, maker, tiny, allow_other_base)
    if base is None:
        return load_model(AutoModelForCausalLM, path, maker, "language model")
    model, tokenizer = load_model(AutoModelForCausalLM, *base, "language model")
    with checkpoints.loading(path, maker):
        return PeftModel.from_pretrained(model, path).eval(), tokenizer


def policy_base(path: str | Path, maker: str, tiny: bool, allow_other_base: bool) -> tuple[str, str] | None:
    """For the LoRA adapter at `path` (a complete checkpoint): (the model its adapter_config.json names, the command
    that makes that model), once that model is checked to be there and to be the one the adapter was trained on
    (adapters.check_base; `allow_other_base` accepts another); None for a whole model. What every script that applies
    an adapter checks before loading it, and the comparison before it samples any method."""
    if not (Path(path) / "adapter_config.json").is_file():
        return None
    trained_on = adapter_base(path, maker)
    makers = {folder.resolve(): name for name, (folder, _, _) in paths.POLICIES.items()}
    name = makers.get(Path(trained_on).resolve())
    remedy = (
        hints.policy_command(name, paths.POLICIES[name][0], tiny)
        if name
        else hints.base_model_remedy(trained_on, "base_model_path")
    )
    checkpoints.require_checkpoint(trained_on, remedy, "language model")
    adapters.check_base(path, trained_on, allow_other_base, maker)
    return trained_on, remedy


def adapter_base(path: str | Path, maker: str) -> str:
    """The model the LoRA adapter at `path` was trained on (its adapter_config.json's base_model_name_or_path)."""
    key = "base_model_name_or_path"
    config = checkpoints.read_checkpoint_json(Path(path) / "adapter_config.json", f"Write it again: {maker}", (key,))
    return config[key]


# ----------------------------------------------------------------------------------------------------------------
# The tiny base: built from the sample's training rows, so it needs the data loading and chat formatting above.


def built_tiny_base(path: Path, rebuild_stale: bool) -> str:
    """The tiny base at `path` (resolve_model's --model_source tiny): built there, once, where it is missing, and
    built again where another recipe built it if `rebuild_stale`; one process builds while the others wait."""
    if path.is_dir() and not rebuild_stale:
        print(
            f"note: {path} was built by another recipe of the tiny preset (an earlier version of this project, or "
            "other sample data); using it as it is: the models trained from it need it so (a new one would have "
            "another tokenizer). train_sft.py --tiny and train_rm.py --tiny build it again, and the stages after "
            "them then need training again."
        )
        return str(path)
    # What the build reads: a bad sample fails in a second, before any build.
    load_preference_data(paths.SAMPLE_DATA)
    state = PartialState()
    with state.main_process_first():  # one process builds it, the others then find it
        if state.is_main_process:
            with checkpoints.waiting_lock(path, f"Waiting for another process building the tiny base at {path} ..."):
                if not path.is_dir() or tiny.stale_tiny_base(path):  # that process built today's: reuse it
                    if state.num_processes == 1:
                        tiny.build_tiny_base(path, *tiny_base_data())
                    else:
                        _build_tiny_base_alone(path)
    return str(path)


def tiny_base_data() -> tuple[list[str], Dataset]:
    """What tiny.build_tiny_base builds the offline tiny base from: the texts its tokenizer is trained on and the
    polite answers its short SFT reads, both from the sample's training rows at the default --eval_fraction
    (split_held_out): a base that had read the held-out answers would let the reward model tell them apart by "text
    the base knows" rather than by style (data/README.md)."""
    data, _ = split_held_out(load_preference_data(paths.SAMPLE_DATA), paths.DEFAULT_EVAL_FRACTION)
    texts = [paths.DEFAULT_SYSTEM_PROMPT] + [row[c] for row in data for c in data_files.REQUIRED_COLUMNS]
    polite = data.map(
        sft_example,
        fn_kwargs={"system_prompt": paths.DEFAULT_SYSTEM_PROMPT, "answer_column": "rejected"},
        remove_columns=data.column_names,
    )
    return texts, polite


def _build_tiny_base_alone(path: Path) -> None:
    """tiny.build_tiny_base in a child process of its own, for a run of several processes: the build trains with a
    Trainer, which inside this process would join the other processes' process group and train with them.

    The child also drops torchrun's OMP_NUM_THREADS=1: it runs alone while the others wait, and with every core it
    builds the same bits as a plain `python` run (the thread count changes the order of fp32 sums)."""
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS")
    env = {key: value for key, value in os.environ.items() if key not in launcher and not key.startswith("ACCELERATE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.ROOT), env.get("PYTHONPATH")]))
    build = (
        "import sys, common; from hfppo import runtime, tiny; runtime.setup(); "
        "tiny.build_tiny_base(sys.argv[1], *common.tiny_base_data())"
    )
    if subprocess.run([sys.executable, "-c", build, str(path)], env=env).returncode != 0:
        raise errors.PipelineError(f"building the tiny base model at {path} failed (its error is above).")
