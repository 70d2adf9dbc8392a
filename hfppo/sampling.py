"""Sampled answers generated, cut, scored and compared with the reference the same way in every script."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from peft import PeftModel
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm
from transformers import GenerationConfig
from trl.trainer.utils import add_fused_lm_head


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


# The per-token figures add_fused_lm_head's head computes, and where answer_logprobs records the temperature it was
# added for: the head divides by the temperature inside its kernel, so a call at another one adds it anew.
FUSED_OUTPUTS, FUSED_TEMPERATURE = ("log_probs", "entropy"), "hfppo_fused_lm_head_temperature"
IGNORE_INDEX = -100  # the label of a position the head skips: prompt and padding


# Scores answers: (prompt ids, answer ids ending at the stop token, or cut at response_length) -> one score each.
RewardFn = Callable[[list[list[int]], list[list[int]]], torch.Tensor]


def critic_values(critic: nn.Module, inputs: dict[str, torch.Tensor], width: int) -> torch.Tensor:
    """V(s_t) for each answer token t: the score head on the hidden state of the token before it (no KV cache: nothing
    reads it, and a checkpointed layer's recompute would append to it again)."""
    hidden = getattr(critic, critic.base_model_prefix)(**inputs, use_cache=False).last_hidden_state[:, -width - 1 : -1]
    return critic.score(hidden).squeeze(-1).float()


PROMPT_KEYS = ("queries", "query_mask")  # left-padded: their padding is on the left
ANSWER_KEYS = ("responses", "mask", "logprobs", "values", "advantages", "returns")  # one column per answer token


def trimmed(rollout: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The rollout's `rows`, cut to their longest prompt and longest answer instead of the whole batch's.

    The columns cut are padding in every one of these rows: left of every prompt (position ids count real tokens
    only) or right of every answer (no real token attends to a later one). So each real token's log-prob, value and
    loss term is the same, to float rounding (a test checks the loss), and the passes are shorter.
    """
    part = {key: value[rows] for key, value in rollout.items()}
    first = int(part["query_mask"].any(0).int().argmax())  # the first column with a prompt token in any row
    width = int(part["lengths"].max())
    return (
        part
        | {key: part[key][:, first:] for key in PROMPT_KEYS if key in part}
        | {key: part[key][:, :width] for key in ANSWER_KEYS if key in part}
    )


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) from the sampled token (Schulman 2020, "Approximating KL divergence")."""
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    return log_ratio.exp() - 1 - log_ratio


def penalised(scores: torch.Tensor, stopped: torch.Tensor, missing_eos_penalty: float) -> torch.Tensor:
    """`scores` minus `missing_eos_penalty` for each answer cut before its stop token (`stopped` False): PPO's and
    GRPO's --missing_eos_penalty, so the policy learns to finish its answers."""
    return scores - missing_eos_penalty * (~stopped).float()


def score_answers(reward_fn: RewardFn, queries, query_mask, responses, lengths, tokenizer, missing_eos_penalty: float):
    """Each answer's score, minus `missing_eos_penalty` where the answer was cut before its stop token."""
    prompt_lists = [query[mask.bool()].tolist() for query, mask in zip(queries, query_mask)]
    answer_lists = [response[:length].tolist() for response, length in zip(responses, lengths)]
    scores = reward_fn(prompt_lists, answer_lists).to(responses.device).float()
    stopped = responses[torch.arange(len(responses)), lengths - 1] == tokenizer.eos_token_id
    return penalised(scores, stopped, missing_eos_penalty), stopped


def sequence_inputs(queries, query_mask, responses, lengths) -> dict[str, torch.Tensor]:
    """Model inputs for left-padded prompts followed by their answers, with position ids that skip the padding."""
    attention_mask = torch.cat([query_mask, answer_mask(lengths, responses.shape[1]).long()], dim=1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return {
        "input_ids": torch.cat([queries, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids,
    }


def answer_logprobs(
    model, inputs: dict[str, torch.Tensor], responses: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob, entropy) of each answer token under softmax(logits / temperature), 0 past each answer's end.

    Computed by TRL's fused LM head (trl.trainer.utils.add_fused_lm_head, added to the model on first use): it
    projects the hidden states through the LM head a tile of the vocabulary at a time and keeps per token only the
    running log-sum-exp, recomputing the tiles in the backward pass. The full-vocabulary logits are never held:
    at 0.5B they are 151,936 values per answer token, 1.9 GB in fp32 for a micro batch of 16 answers of 200 tokens,
    and the log-softmax, its temperature division and the entropy each held another copy (docs/ppo.md, Memory).
    Other forward calls (generate) run the model's own forward, unchanged.
    """
    causal_lm = model.get_base_model() if isinstance(model, PeftModel) else model
    if getattr(causal_lm, FUSED_TEMPERATURE, None) != temperature:
        add_fused_lm_head(causal_lm, temperature=temperature, outputs=FUSED_OUTPUTS)
        setattr(causal_lm, FUSED_TEMPERATURE, temperature)
    width = responses.shape[1]
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, IGNORE_INDEX)
    labels[:, :-width] = IGNORE_INDEX  # the prompt: only the answer is scored
    output = model(**inputs, labels=labels, fused_lm_head=True)
    return output.log_probs[:, -width:], output.entropy[:, -width:]


@contextmanager
def merged(policy: PeftModel) -> Iterator[PeftModel]:
    """The adapter folded into the weights while generating, then taken out again.

    Unmerged, every adapted layer runs two extra small matmuls per token, and generation is bound by kernel launches:
    on a GPU it took about twice as long (docs/ppo.md, Speed). Each merge and unmerge
    rounds the fp32 base weights (the reference) by about one unit in the last place, 6e-8 relative: far below what
    moves a log-prob.
    Weights held in bf16 (DeepSpeed casts them) would round by 4e-3 and drift, so those generate unmerged.
    """
    if policy.get_base_model().dtype != torch.float32:
        yield policy
        return
    policy.merge_adapter()
    try:
        yield policy
    finally:
        policy.unmerge_adapter()


@torch.no_grad()
def generate(
    policy,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    chunk: int,
    device,
    progress: str | None = None,
    over_another_bar: bool = False,
) -> dict[str, torch.Tensor]:
    """Sampled answers to `prompts`, `chunk` at a time, cut after their first stop token, with the left-padded prompts;
    with a progress bar titled `progress` if given (training has its own bar over the updates). `over_another_bar`:
    drawn on the line of a bar still open (training's, during evaluation) and cleared when done, since a bar below
    another moves the cursor with terminal escape codes, which a log file keeps as garbage.

    generate() runs with the KV cache and stops once every answer in the chunk has its stop token.
    """
    generation_config = sampling_config(tokenizer, max_new_tokens, temperature)
    queries, query_mask = (tensor.to(device) for tensor in padded(prompts, tokenizer.pad_token_id, "left"))
    responses = []
    bar = tqdm(
        total=len(prompts),
        desc=progress,
        unit="answer",
        disable=progress is None,
        position=0 if over_another_bar else None,
        leave=not over_another_bar,
    )
    for i in range(0, len(prompts), chunk):
        output = policy.generate(
            input_ids=queries[i : i + chunk],
            attention_mask=query_mask[i : i + chunk],
            generation_config=generation_config,
        )
        responses.extend(output[:, queries.shape[1] :])
        bar.update(len(output))
    bar.close()
    responses = nn.utils.rnn.pad_sequence(responses, batch_first=True, padding_value=tokenizer.pad_token_id)
    responses, lengths = cut_after_stop(responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return {"queries": queries, "query_mask": query_mask, "responses": responses, "lengths": lengths}


@torch.no_grad()
def forward_rollout(
    policy,
    critic: nn.Module | None,
    batch: dict[str, torch.Tensor],
    temperature: float,
    chunk: int,
    reference: bool = True,
) -> dict[str, torch.Tensor]:
    """For each answer token: the policy's log-probs, the reference's (its adapter off) unless `reference` is False,
    and, given a critic, its value.

    The log-probs come from a forward pass, not from generate()'s processed scores, so they are those of the plain
    temperature-scaled softmax that the training pass computes too.
    """
    sequences = {key: batch[key] for key in ("queries", "query_mask", "responses", "lengths")}
    num_answers, width = batch["responses"].shape
    logprobs, ref_logprobs, values = [], [], []
    for rows in torch.arange(num_answers).split(chunk):
        part = trimmed(sequences, rows)  # each output padded back to the batch's width with zeros
        responses, part_width = part["responses"], part["responses"].shape[1]
        inputs = sequence_inputs(part["queries"], part["query_mask"], responses, part["lengths"])
        logprobs.append(answer_logprobs(policy, inputs, responses, temperature)[0])
        if reference:
            with policy.disable_adapter():  # the reference: the same weights without the adapter
                ref_logprobs.append(answer_logprobs(policy, inputs, responses, temperature)[0])
        if critic is not None:
            values.append(critic_values(critic, inputs, part_width))
    outputs = {"logprobs": logprobs} | ({"ref_logprobs": ref_logprobs} if reference else {})
    outputs |= {"values": values} if values else {}
    return {
        key: torch.cat([nn.functional.pad(piece, (0, width - piece.shape[1])) for piece in pieces])
        for key, pieces in outputs.items()
    }


def answer_texts(tokenizer, batch: dict[str, torch.Tensor]) -> list[str]:
    """Each sampled answer as text, without its stop token: what the judge reads and a person sees."""
    return [tokenizer.decode(r[:n], skip_special_tokens=True) for r, n in zip(batch["responses"], batch["lengths"])]


def kl_to_reference(
    policy, batch: dict[str, torch.Tensor], temperature: float, chunk: int, reference=None
) -> torch.Tensor:
    """Per answer, the sum over its tokens of log pi(token) - log pi_ref(token): objective/kl's k1 estimate. pi_ref
    is `reference` if given (another model: compare.py's SFT model), else the policy, adapter off."""
    if reference is None:
        rollout = forward_rollout(policy, None, batch, temperature, chunk)
        logprobs, ref_logprobs = rollout["logprobs"], rollout["ref_logprobs"]
    else:
        logprobs = forward_rollout(policy, None, batch, temperature, chunk, reference=False)["logprobs"]
        ref_logprobs = forward_rollout(reference, None, batch, temperature, chunk, reference=False)["logprobs"]
    kl = kl_estimate(logprobs, ref_logprobs, "k1")
    return (kl * answer_mask(batch["lengths"], kl.shape[1])).sum(1)
