"""PPO's pieces, each on its own: the algorithm (GAE, whitening, the KL estimators, the loss) against
hand-computed cases; batch arithmetic, the optimizers' settings, trimmed micro batches, the fused LM head and
gradient checkpointing on small random models; sampling, identity at the start and the reward on the session's
tiny models. No training run: those are in tests/test_ppo_run.py."""

import json
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, Qwen2Config

import common
import eval_rm
import train_ppo
from conftest import FLOAT32_EPS, float32_sum_tolerance, ppo_args
from hfppo import cli, errors, paths, ppo_setup, sampling

STOP, PAD = 2, 0  # the tiny tokenizer's <|im_end|> and <|endoftext|>
QUESTIONS = ["吃了没?", "地球离太阳多远?", "推荐一本书", "帮我想想怎么跟领导提加薪"]


# ----------------------------------------------------------------------------------------------------------------
# The algorithm's pieces, against hand-computed cases


def test_gae_on_a_hand_computed_answer():
    """rewards (0, 0, 1), values 0.5 each, gamma 1, lambda 0.5: deltas (0, 0, 0.5), advantages (0.125, 0.25, 0.5)."""
    advantages, returns = train_ppo.gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.5]]), 1.0, 0.5)
    assert advantages.tolist() == [[0.125, 0.25, 0.5]]
    assert returns.tolist() == [[0.625, 0.75, 1.0]]


def test_gae_on_a_padded_batch_equals_a_plain_loop_over_each_answer():
    torch.manual_seed(0)
    lengths, width, gamma, lam = [5, 2, 7], 7, 0.9, 0.8
    mask = torch.arange(width) < torch.tensor(lengths)[:, None]
    rewards, values = torch.randn(3, width) * mask, torch.randn(3, width) * mask
    advantages, returns = train_ppo.gae(rewards, values, gamma, lam)
    for row, length in enumerate(lengths):
        expected, next_advantage = [0.0] * length, 0.0
        for t in reversed(range(length)):
            next_value = values[row, t + 1].item() if t + 1 < length else 0.0  # terminal state after the last token
            delta = rewards[row, t].item() + gamma * next_value - values[row, t].item()
            next_advantage = delta + gamma * lam * next_advantage
            expected[t] = next_advantage
        assert advantages[row, :length].tolist() == pytest.approx(expected, abs=1e-6)
        assert returns[row, :length].tolist() == pytest.approx(
            [a + v for a, v in zip(expected, values[row, :length].tolist())], abs=1e-6
        )
        assert advantages[row, length:].abs().sum() == 0


def test_masked_whitening_uses_the_real_tokens_only():
    values = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 99.0, 99.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    whitened = train_ppo.masked_whiten(values, mask)
    std = math.sqrt(1.25)  # of 1, 2, 3, 4 (mean 2.5)
    expected = [[-1.5 / std, -0.5 / std, 0.5 / std, 0.0], [1.5 / std, 0.0, 0.0, 0.0]]
    assert whitened.tolist() == [pytest.approx(row, abs=1e-5) for row in expected]


def test_answers_are_cut_after_their_first_stop_token():
    responses = torch.tensor([[5, 7, STOP, 9, STOP], [5, 6, 7, 8, 9], [STOP, 3, 3, 3, 3], [5, PAD, 6, STOP, 3]])
    cut, lengths = sampling.cut_after_stop(responses, STOP, PAD)
    assert lengths.tolist() == [3, 5, 1, 4]
    assert cut.tolist() == [
        [5, 7, STOP, PAD, PAD],
        [5, 6, 7, 8, 9],
        [STOP, PAD, PAD, PAD, PAD],
        [5, PAD, 6, STOP, PAD],
    ]


@pytest.mark.parametrize(
    "ratio, k1, k3",
    [
        (0.5, math.log(2), 0.5 - 1 + math.log(2)),
        (2.0, -math.log(2), 2 - 1 - math.log(2)),  # k1 can be < 0
    ],
    ids=["r=0.5", "r=2"],
)
def test_kl_estimators(ratio, k1, k3):
    """pi = 0.5 at the sampled token and pi_ref = r pi: k1 = -log r, k3 = r - 1 - log r. In float32, each within
    float32_sum_tolerance of its terms (the log-probs, log r, r and 1, each rounded once; exp and log may round
    otherwise on another CPU's vector kernels)."""
    logprobs, ref_logprobs = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.5 * ratio)])
    log_terms = [math.log(0.5), math.log(0.5 * ratio), math.log(ratio)]
    k1_tolerance = float32_sum_tolerance(log_terms)
    assert sampling.kl_estimate(logprobs, ref_logprobs, "k1").item() == pytest.approx(k1, abs=k1_tolerance)
    k3_tolerance = k1_tolerance + float32_sum_tolerance([ratio, 1, math.log(ratio)])
    assert sampling.kl_estimate(logprobs, ref_logprobs, "k3").item() == pytest.approx(k3, abs=k3_tolerance)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimators_are_0_between_equal_log_probs(estimator):
    """Exact: x - x is 0.0 and exp(0.0) 1.0 in any float arithmetic."""
    logprobs = torch.tensor([math.log(0.5), -3.7])
    assert sampling.kl_estimate(logprobs, logprobs, estimator).tolist() == [0.0, 0.0]


def test_positions_skip_the_left_padding():
    queries, query_mask = sampling.padded([[7, 8, 9], [7]], PAD, "left")
    inputs = sampling.sequence_inputs(queries, query_mask, torch.tensor([[4, STOP], [4, STOP]]), torch.tensor([2, 1]))
    assert inputs["input_ids"].tolist() == [[7, 8, 9, 4, STOP], [PAD, PAD, 7, 4, STOP]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 0]]
    assert inputs["position_ids"][:, :4].tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]


def test_check_same_tokenizer_refuses_another_vocabulary(tiny_base):
    tokenizer, other = AutoTokenizer.from_pretrained(tiny_base), AutoTokenizer.from_pretrained(tiny_base)
    common.check_same_tokenizer(tokenizer, other, "the critic", "sft")
    other.add_tokens(["<|extra|>"])
    with pytest.raises(errors.PipelineError, match="the critic differs from the policy's"):
        common.check_same_tokenizer(tokenizer, other, "the critic", "sft")


# ----------------------------------------------------------------------------------------------------------------
# Batch arithmetic, the two optimisers' settings, and trimmed micro batches, on small random models


def random_models(seed=0):
    """A two-layer random Qwen2 with the default LoRA adapter as the policy, and a random critic: no checkpoint."""
    torch.manual_seed(seed)
    shape = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=PAD, num_labels=1,
    )  # fmt: skip
    config = train_ppo.PPOConfig()
    lora_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=config.lora_target_modules)
    policy = get_peft_model(AutoModelForCausalLM.from_config(shape), lora_config).eval()
    return policy, AutoModelForSequenceClassification.from_config(shape).eval()


def test_batch_sizes_decouple_the_rollout_from_the_micro_batch():
    """64 answers per update on each of 2 processes, generated 32 at a time, 8 optimizer steps of 4 micro batches."""
    config = ppo_args(
        "--per_device_train_batch_size", 2, "--gradient_accumulation_steps", 4, "--num_mini_batches", 8,
        "--local_rollout_forward_batch_size", 32, "--total_episodes", 256,
    )[1]  # fmt: skip
    assert ppo_setup.batch_sizes(config, num_processes=2) == ppo_setup.BatchSizes(64, 128, 8, 32)
    assert ppo_setup.count_updates(config, ppo_setup.batch_sizes(config, 2), num_questions=1000) == 2
    config.local_rollout_forward_batch_size = 100  # more than the update's answers: one pass
    assert ppo_setup.batch_sizes(config, num_processes=1).rollout_chunk == 64


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ("--local_rollout_forward_batch_size", 6),
            "--local_rollout_forward_batch_size 6 does not divide the --per_device_train_batch_size 8 x "
            "--gradient_accumulation_steps 1 x --num_mini_batches 2 = 16 answers",
        ),
        (
            ("--total_episodes", 20, "--per_device_train_batch_size", 4),
            "--total_episodes 20 is not a whole number of updates of 8 answers",
        ),
    ],
)
def test_inexact_batch_divisions_stop_before_anything_loads(tmp_path, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.ArgumentError) as error:
        train_ppo.main(*ppo_args(*flags))
    assert message in str(error.value) and cli.HELP_HINT in str(error.value)
    assert not any(tmp_path.iterdir())  # nothing written, nothing loaded


def test_actor_and_critic_learning_rates_reach_their_parameter_groups():
    policy, critic = random_models()
    _, config = ppo_args("--learning_rate", 1e-4, "--critic_learning_rate", 3e-5)
    optimizer = train_ppo.make_optimizer(policy, critic, config)
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert {name: group["lr"] for name, group in groups.items()} == {"policy": 1e-4, "critic": 3e-5}
    assert {name: group["weight_decay"] for name, group in groups.items()} == {"policy": 0.0, "critic": 0.0}
    assert optimizer.defaults["fused"]  # transformers' default kernel (adamw_torch_fused), several times faster
    adapter = {id(p) for name, p in policy.named_parameters() if "lora_" in name}
    assert {id(p) for p in groups["policy"]["params"]} == adapter  # the adapter only: the SFT weights stay frozen
    assert {id(p) for p in groups["critic"]["params"]} == {id(p) for p in critic.parameters()}

    # Adam's first step moves every parameter with a gradient by about its group's rate.
    before = {id(p): p.detach().clone() for group in optimizer.param_groups for p in group["params"]}
    ids = torch.randint(3, 64, (2, 6))
    (policy(input_ids=ids).logits.sum() + critic(input_ids=ids).logits.sum()).backward()
    optimizer.step()
    for name, rate in (("policy", 1e-4), ("critic", 3e-5)):
        moved = torch.cat([(p.detach() - before[id(p)]).abs().flatten() for p in groups[name]["params"]])
        assert moved.max().item() == pytest.approx(rate, rel=0.01), name

    # Unset, the critic takes the policy's rate, as the original's one rate for both; weight decay is settable.
    _, config = ppo_args("--learning_rate", 2e-5, "--weight_decay", 0.1)
    optimizer = train_ppo.make_optimizer(policy, critic, config)
    assert [(group["lr"], group["weight_decay"]) for group in optimizer.param_groups] == [(2e-5, 0.1)] * 2


# Prompts of 7, 3, 4 and 6 tokens; answers of 13, 3, 5 and 5 tokens (the last cut before its stop token).
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15, 16, 17]]
ANSWERS = [[20] * 12 + [STOP], [21, 22, STOP], [23, 24, 25, 26, STOP], [27, 28, 29, 30, 31]]


def rollout_of(policy, critic, prompts, answers, seed=0):
    """A rollout's tensors for these prompt and answer ids, with random advantages and returns, and old log-probs and
    values off the models' own, so that both clips act."""
    queries, query_mask = sampling.padded(prompts, PAD, "left")
    responses, lengths = sampling.cut_after_stop(sampling.padded(answers, PAD, "right")[0], STOP, PAD)
    batch = {"queries": queries, "query_mask": query_mask, "responses": responses, "lengths": lengths}
    batch |= sampling.forward_rollout(policy, critic, batch, 0.7, chunk=len(prompts))
    mask = sampling.answer_mask(lengths, responses.shape[1]).float()
    generator = torch.Generator().manual_seed(seed)
    noise = [torch.randn(responses.shape, generator=generator) for _ in range(4)]
    return batch | {
        "mask": mask,
        "logprobs": (batch["logprobs"] + 0.2 * noise[0]) * mask,
        "values": (batch["values"] + noise[1]) * mask,
        "advantages": noise[2] * mask,
        "returns": (batch["values"] + noise[3]) * mask,
    }


def test_trimmed_and_untrimmed_micro_batches_give_the_same_loss():
    """A micro batch cut to its longest prompt and answer gives the loss, statistics and gradients of the same rows at
    the whole batch's width."""
    policy, critic = random_models()
    model = train_ppo.PolicyAndValue(policy, critic)
    rollout = rollout_of(policy, critic, PROMPTS, ANSWERS)
    rows = torch.tensor([1, 2])  # prompts of 3 and 4 tokens in a batch padded to 7, answers of 3 and 5 of 13
    micro = sampling.trimmed(rollout, rows)
    assert micro["queries"].shape == (2, 4) and micro["responses"].shape == (2, 5)
    _, config = ppo_args()
    results = []
    for part in (micro, {key: value[rows] for key, value in rollout.items()}):
        model.zero_grad()
        loss, stats = train_ppo.ppo_loss(model, part, config)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((loss.item(), {key: value.item() for key, value in stats.items()}, grads))
    (loss, stats, grads), (full_loss, full_stats, full_grads) = results
    assert stats["clipfrac"] > 0 and stats["value_clipfrac"] > 0  # both clips act
    assert loss == pytest.approx(full_loss, rel=1e-6, abs=1e-7)
    assert stats == pytest.approx(full_stats, rel=1e-5, abs=1e-6)
    assert grads.keys() == full_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=1e-4, atol=1e-6)


class FullLogits(train_ppo.PolicyAndValue):
    """The computation the fused LM head replaced: the full-vocabulary logits of the answer, their log-softmax at the
    temperature, and its entropy."""

    def forward(self, inputs, responses, temperature):
        width = responses.shape[1]
        logits = self.policy(**inputs, logits_to_keep=width + 1).logits[:, :-1] / temperature
        log_p = logits.log_softmax(-1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        return (
            log_p.gather(-1, responses[..., None])[..., 0],
            entropy,
            sampling.critic_values(self.critic, inputs, width),
        )


def test_the_fused_head_gives_the_full_logits_log_probs_entropy_loss_and_gradients():
    """The update's log-probs, entropy, loss and gradients through TRL's fused LM head (the vocabulary a tile at a
    time) are those of the full logits, to float32 rounding.

    Each logit is a dot product of hidden_size terms: float32 computes it within hidden_size u sum|h_i w_i| of exact
    in any tiling (Higham, Accuracy and Stability of Numerical Algorithms, 3.1; u = FLOAT32_EPS / 2), so the two
    computations' logits z = h.w / T differ by at most dz = hidden_size FLOAT32_EPS max sum|h_i w_i| / T. A
    log-sum-exp of V terms adds V FLOAT32_EPS relative to its sum, and so absolute to its log: a log-prob z_t - logZ
    moves at most 2 dz + V FLOAT32_EPS, an entropy logZ - sum p z at most that times (1 + max|z|). The loss is
    Lipschitz in the log-probs with constant max|A| max(ratio); the gradients, a few float32 matmuls deep here, are
    held to 1e-4 relative, a decade above their own rounding."""
    policy, critic = random_models()
    with torch.no_grad():  # a trained adapter: B = 0 at initialisation would leave the policy the reference
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    rollout = rollout_of(policy, critic, PROMPTS, ANSWERS)
    _, config = ppo_args()
    micro = sampling.trimmed(rollout, torch.arange(len(PROMPTS)))
    inputs = sampling.sequence_inputs(micro["queries"], micro["query_mask"], micro["responses"], micro["lengths"])
    mask, width, temperature = micro["mask"].bool(), micro["responses"].shape[1], config.temperature
    results = []
    for model in (train_ppo.PolicyAndValue(policy, critic), FullLogits(policy, critic)):
        model.zero_grad()
        logprobs, entropy, _ = model(inputs, micro["responses"], temperature)
        loss, stats = train_ppo.ppo_loss(model, micro, config)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((logprobs.detach()[mask], entropy.detach()[mask], loss.item(), stats, grads))
    (logprobs, entropy, loss, stats, grads), (full_logprobs, full_entropy, full_loss, full_stats, full_grads) = results

    with torch.no_grad():
        hidden = policy.get_base_model().model(**inputs).last_hidden_state[:, -width - 1 : -1][mask]
        head = policy.get_base_model().get_output_embeddings().weight
        dz = hidden.shape[-1] * FLOAT32_EPS * (hidden.abs() @ head.abs().T).max().item() / temperature
        max_z = (hidden @ head.T).abs().max().item() / temperature
    logprob_tolerance = 2 * dz + head.shape[0] * FLOAT32_EPS
    assert (logprobs - full_logprobs).abs().max() <= logprob_tolerance < 1e-3
    assert (entropy - full_entropy).abs().max() <= logprob_tolerance * (1 + max_z)
    # the entropy of softmax(logits / T), the distribution sampled from: the raw logits' is far off
    raw = policy(**inputs, logits_to_keep=width + 1).logits[:, :-1].detach().log_softmax(-1)
    assert ((-(raw.exp() * raw).sum(-1))[mask] - full_entropy).abs().min() > 10 * logprob_tolerance * (1 + max_z)
    ratio = (full_logprobs - micro["logprobs"][mask]).exp()
    assert abs(loss - full_loss) <= micro["advantages"].abs().max().item() * ratio.max().item() * logprob_tolerance
    assert stats["entropy"].item() == pytest.approx(full_stats["entropy"].item(), abs=logprob_tolerance * (1 + max_z))
    assert grads.keys() == full_grads.keys() and any("lora_A" in name for name in grads)
    for name in grads:
        assert (grads[name] - full_grads[name]).norm() <= 1e-4 * full_grads[name].norm(), name


def counted(forward, calls: list):
    def forward_counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    return forward_counted


def test_gradient_checkpointing_recomputes_each_layer_and_changes_no_loss_or_gradient():
    """--gradient_checkpointing: each decoder layer of both models runs again in the backward pass (its activations
    were not kept), and the loss and gradients are those without it. The recompute is the same float32 arithmetic on
    the same inputs, but the backward may accumulate in another order: gradients are held to 1e-6 relative."""
    results = []
    for checkpointing in (False, True):
        policy, critic = random_models()
        model = train_ppo.PolicyAndValue(policy, critic).eval()
        if checkpointing:
            for part in (policy.get_base_model(), critic):
                ppo_setup.checkpoint_layers(part)
        _, config = ppo_args()
        rollout = rollout_of(policy, critic, PROMPTS, ANSWERS)
        calls = []  # counted in forward itself: a checkpoint's recompute runs no module hooks
        for part in (policy.get_base_model().model, critic.model):
            for layer in part.layers:
                layer.mlp.forward = counted(layer.mlp.forward, calls)
        with torch.no_grad():  # scoring: no backward, so nothing is recomputed
            model(sampling.sequence_inputs(*(rollout[k] for k in ("queries", "query_mask", "responses", "lengths"))),
                  rollout["responses"], config.temperature)  # fmt: skip
        scoring_calls = len(calls)
        loss, _ = train_ppo.ppo_loss(model, rollout, config)
        loss.backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads, scoring_calls, len(calls) - scoring_calls))
        assert not any(module.training for module in model.modules() if isinstance(module, torch.nn.Dropout))
    (loss, grads, scoring_calls, update_calls), (ck_loss, ck_grads, ck_scoring_calls, ck_update_calls) = results
    layers = 2 * 2  # two layers in each of the two models
    assert scoring_calls == ck_scoring_calls == layers
    assert (update_calls, ck_update_calls) == (layers, 2 * layers)
    assert ck_loss == loss
    assert grads.keys() == ck_grads.keys()
    for name in grads:
        assert (grads[name] - ck_grads[name]).norm() <= 1e-6 * grads[name].norm(), name


def test_the_rollout_forward_trims_each_chunk_without_changing_a_log_prob():
    policy, critic = random_models()
    queries, query_mask = sampling.padded(PROMPTS, PAD, "left")
    responses, lengths = sampling.cut_after_stop(sampling.padded(ANSWERS, PAD, "right")[0], STOP, PAD)
    batch = {"queries": queries, "query_mask": query_mask, "responses": responses, "lengths": lengths}
    whole = sampling.forward_rollout(policy, critic, batch, 0.7, chunk=4)  # one pass at the batch's width
    chunked = sampling.forward_rollout(policy, critic, batch, 0.7, chunk=2)  # the second pass is trimmed
    mask = sampling.answer_mask(lengths, responses.shape[1])
    for key in ("logprobs", "ref_logprobs", "values"):
        assert chunked[key].shape == responses.shape
        torch.testing.assert_close(chunked[key][mask], whole[key][mask], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Sampling and identity at the start, on the tiny SFT model with a fresh adapter


@pytest.fixture(scope="module")
def fresh_policy(sft_run, tiny_base):
    """The tiny SFT model with a freshly initialised adapter, the critic from the tiny base, and the tokenizer."""
    torch.manual_seed(0)
    config = train_ppo.PPOConfig()
    sft = AutoModelForCausalLM.from_pretrained(sft_run / paths.SFT_DIR)
    lora_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=config.lora_target_modules)
    policy = get_peft_model(sft, lora_config).eval()
    critic = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1).eval()
    return policy, critic, AutoTokenizer.from_pretrained(sft_run / paths.SFT_DIR)


def prompts(tokenizer, questions=QUESTIONS):
    return [common.prompt_ids(tokenizer, {"question": q}, paths.DEFAULT_SYSTEM_PROMPT) for q in questions]


def test_sampling_ignores_the_checkpoints_top_k_top_p_and_repetition_penalty(fresh_policy, sft_run):
    """The SFT checkpoint carries Qwen's sampling defaults; generate() must still sample softmax(logits / T)."""
    policy, _, tokenizer = fresh_policy
    saved = json.loads((sft_run / paths.SFT_DIR / "generation_config.json").read_text())
    assert (saved["top_k"], saved["top_p"], saved["repetition_penalty"]) == (20, 0.8, 1.05)
    queries, query_mask = sampling.padded(prompts(tokenizer), tokenizer.pad_token_id, "left")
    output = policy.generate(
        input_ids=queries,
        attention_mask=query_mask,
        generation_config=sampling.sampling_config(tokenizer, 16, 0.7),
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
    )
    for processed, raw in zip(output.scores, output.logits):
        torch.testing.assert_close(processed, raw / 0.7)  # no -inf from top-k/top-p, no repetition penalty


def test_rollout_training_pass_and_reference_agree_before_the_first_step(fresh_policy):
    policy, critic, tokenizer = fresh_policy
    torch.manual_seed(1)
    batch = sampling.generate(policy, tokenizer, prompts(tokenizer, QUESTIONS * 2), 24, 0.7, 8, "cpu")
    batch |= sampling.forward_rollout(policy, critic, batch, 0.7, 8)  # rollout chunks of 8
    mask = torch.arange(batch["responses"].shape[1]) < batch["lengths"][:, None]
    assert mask.sum() > 50

    model = train_ppo.PolicyAndValue(policy, critic)
    for micro in torch.arange(len(mask)).split(2):  # the training pass's micro batches, with gradients
        inputs = sampling.sequence_inputs(
            batch["queries"][micro], batch["query_mask"][micro], batch["responses"][micro], batch["lengths"][micro]
        )
        new_logprobs, _, values = model(inputs, batch["responses"][micro], 0.7)
        assert new_logprobs.requires_grad
        for new, old in ((new_logprobs, batch["logprobs"][micro]), (values, batch["values"][micro])):
            assert (new.detach() - old)[mask[micro]].abs().max() < 1e-4
    assert (batch["logprobs"] - batch["ref_logprobs"])[mask].abs().max() < 1e-4


# ----------------------------------------------------------------------------------------------------------------
# The reward PPO optimises is eval_rm.py's score


def test_the_ppo_reward_of_an_answer_is_eval_rms_score(rm_run, tiny_base):
    model, tokenizer = common.load_model(AutoModelForSequenceClassification, rm_run / paths.RM_DIR, "")
    question, answer, longer = "吃了没?", "关你屁事,自己吃去。", "烦死了，你自己不会查吗？问这种问题浪费我时间，" * 3
    prompt = common.prompt_ids(tokenizer, {"question": question}, paths.DEFAULT_SYSTEM_PROMPT)
    answer_ids = [
        common.conversation_ids(tokenizer, {"question": question}, paths.DEFAULT_SYSTEM_PROMPT, text)[len(prompt) :]
        for text in (answer, longer)
    ]
    responses = torch.nn.utils.rnn.pad_sequence([torch.tensor(a) for a in answer_ids], True, tokenizer.pad_token_id)
    responses, lengths = sampling.cut_after_stop(responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
    queries, query_mask = sampling.padded(prompts(tokenizer, ["你好", question]), tokenizer.pad_token_id, "left")
    reward_fn = common.reward_model_fn(model, tokenizer, batch_size=8)
    scores, stopped = sampling.score_answers(reward_fn, queries, query_mask, responses, lengths, tokenizer, 1.0)
    assert stopped.tolist() == [True, True]
    assert scores[1].item() == pytest.approx(
        eval_rm.reward(model, tokenizer, question, longer, paths.DEFAULT_SYSTEM_PROMPT), abs=1e-4
    )
    assert scores[0].item() == pytest.approx(
        eval_rm.reward(model, tokenizer, "你好", answer, paths.DEFAULT_SYSTEM_PROMPT), abs=1e-4
    )

    # Cut before its stop token: the score of the text so far, minus missing_eos_penalty.
    cut_scores, stopped = sampling.score_answers(
        reward_fn, queries[1:], query_mask[1:], responses[1:, :5], torch.tensor([5]), tokenizer, 1.0
    )
    expected = common.reward_scores(model, tokenizer, [prompt + answer_ids[1][:5]]).item() - 1.0
    assert not stopped.item() and cut_scores.item() == pytest.approx(expected, abs=1e-4)


def test_a_critic_from_the_reward_model_starts_at_its_scores(rm_run, capsys):
    """--value_model_path checkpoint/rm (OpenRLHF; the N+ details): the critic keeps the reward model's score head, so
    its first value of each answer prefix is the reward model's score of that prefix."""
    path = rm_run / paths.RM_DIR
    critic = ppo_setup.load_critic(str(path)).eval()
    assert f"The critic: {path}, its score head included." in capsys.readouterr().out
    reward_model, tokenizer = common.load_model(AutoModelForSequenceClassification, path, "")
    torch.testing.assert_close(critic.score.weight, reward_model.score.weight)
    question = {"question": "吃了没?"}
    (prompt,) = prompts(tokenizer, [question["question"]])
    answer = common.conversation_ids(tokenizer, question, paths.DEFAULT_SYSTEM_PROMPT, "关你屁事,自己吃去。")
    answer = answer[len(prompt) :]
    queries, query_mask = sampling.padded([prompt], tokenizer.pad_token_id, "left")
    inputs = sampling.sequence_inputs(queries, query_mask, torch.tensor([answer]), torch.tensor([len(answer)]))
    with torch.no_grad():
        values = sampling.critic_values(critic, inputs, len(answer))[0]
    prefixes = [prompt + answer[:t] for t in range(len(answer))]  # V(s_t): the text before answer token t
    expected = common.reward_scores(reward_model, tokenizer, prefixes)
    assert values.tolist() == pytest.approx(expected.tolist(), abs=1e-4)
