"""Sampled answers generated, cut, scored and compared with the reference the same way in every script."""

from typing import Literal

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import GenerationConfig


def sampling_config(tokenizer, max_new_tokens: int, temperature: float) -> GenerationConfig:
    """Sample from softmax(logits / temperature) and nothing else; stop at the end-of-turn token (eos).

    PPO computes log-probs under exactly this distribution, so every sampling warper a checkpoint's
    generation_config.json may turn on is set off here: generate() fills each field left unset from that file, and
    Qwen2.5-Instruct's sets top_k 20, top_p 0.8 and repetition_penalty 1.05. Inherited, they make the sampled
    distribution differ from the policy's, and the KL to the reference is no longer 0 before the first step (README,
    Stage 3: why not TRL's PPOTrainer).
    """
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        repetition_penalty=1.0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def padded(sequences: list[list[int]], pad_token_id: int, side: Literal["left", "right"]):
    """(ids, attention mask) of token sequences padded to one length. Prompts are padded on the left, so that every
    answer generated from them starts at the same column; scored sequences on the right (see `reward_scores`)."""
    rows = [torch.tensor(ids) for ids in sequences]
    ids = pad_sequence(rows, batch_first=True, padding_value=pad_token_id, padding_side=side)
    mask = pad_sequence([torch.ones_like(row) for row in rows], batch_first=True, padding_side=side)
    return ids, mask


def answer_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """True at each answer's tokens, False at the padding after them (answers of `lengths`, padded to `width`)."""
    return torch.arange(width, device=lengths.device) < lengths[:, None]


def cut_after_stop(
    responses: torch.Tensor, stop_token_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad everything after each answer's first stop token; return (answers, lengths including the stop token).

    Answers that never stopped keep their full width. Lengths, not the pad id, say where an answer ends: the model
    may sample the pad token itself mid-answer.
    """
    is_stop = responses == stop_token_id
    lengths = torch.where(is_stop.any(1), is_stop.int().argmax(1) + 1, responses.shape[1])
    return responses.masked_fill(~answer_mask(lengths, responses.shape[1]), pad_token_id), lengths
