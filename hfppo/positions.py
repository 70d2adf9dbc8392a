"""A model's positions (max_position_embeddings): the most tokens a prompt and its answer can have together. Every
length a flag asks for is checked against them where it meets a model, and refused with what to pass instead: past
them a model reads positions it was never trained on, and answers turn to noise or memory runs out."""

import json
from collections.abc import Mapping
from pathlib import Path

from hfppo import errors

CONFIG_FILE = "config.json"  # a checkpoint's model config, which holds max_position_embeddings


def positions(model_or_folder) -> int | None:
    """max_position_embeddings of a loaded model's config, or of a checkpoint folder's config.json (read without
    loading any weight); None where neither says (an adapter's folder has no config.json: its base has)."""
    if hasattr(model_or_folder, "config"):
        return getattr(model_or_folder.config, "max_position_embeddings", None)
    config = Path(model_or_folder) / CONFIG_FILE
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):  # no file, or none the loader would take: it says so itself
        return None
    return value if isinstance(value, int) else None


def fewest_positions(models: Mapping[str, object]) -> tuple[int, str] | None:
    """(the fewest positions among `models`, the name of the model that has them): models by name, each a loaded
    model or a checkpoint folder; None where none says."""
    known = [(count, name) for name, model in models.items() if (count := positions(model)) is not None]
    return min(known) if known else None


def check_fits(
    prompt: str, prompt_tokens: int, answer_flag: str, answer_tokens: int, limit: tuple[int, str] | None, shorten: str
) -> None:
    """Refuse a prompt of `prompt_tokens` (described by `prompt`: a flag and its value, or a question's prompt) and an
    answer of `answer_flag`'s `answer_tokens` that cannot fit `limit`'s positions together (fewest_positions);
    `shorten` says how to make the prompt shorter. No limit known: nothing to check."""
    if limit is None or prompt_tokens + answer_tokens <= limit[0]:
        return
    count, model = limit
    room = count - prompt_tokens
    fix = f"Pass {answer_flag} {room} or less, or {shorten}" if room >= 1 else shorten[0].upper() + shorten[1:]
    raise errors.ArgumentError(
        f"{prompt} and {answer_flag} {answer_tokens} make {prompt_tokens + answer_tokens:,} tokens, more than the "
        f"{count:,} positions of {model} (max_position_embeddings in its config), which a prompt and its answer "
        f"share. {fix}."
    )


def longest_token(tokenizer) -> int:
    """The most characters one token of `tokenizer` spells: the length of its longest vocabulary entry, which for a
    byte-level vocabulary counts bytes, never fewer than the characters they decode to. A text of more than
    tokens x longest_token characters cannot fit in `tokens`, so it is refused before it is tokenized."""
    return max(map(len, tokenizer.get_vocab()))


def check_question(prompt_tokens: int, max_new_tokens: int, limit: tuple[int, str] | None) -> None:
    """check_fits for a question's prompt (the question and --system_prompt in the chat template) and --max_new_tokens:
    eval_sft.py's and eval_ppo.py's chats, at start with an empty question and then for each one asked."""
    check_fits(
        f"A prompt of {prompt_tokens:,} tokens (the question and --system_prompt)",
        prompt_tokens,
        "--max_new_tokens",
        max_new_tokens,
        limit,
        "shorten the question or --system_prompt",
    )
