"""The opt-in tier on real weights (`make test-real MODEL=DIR`; tests/README.md, "On real weights"): what the tiny
preset's model and tokenizer cannot show, on a real pretrained Qwen2.5-family checkpoint in float32 on the CPU.

Each stage runs as its script does, in this process, with the CPU preset's config (configs/cpu/), on TRAIN_ROWS rows
of the sample to train on and one held out, for one optimizer step of those rows; the answers PPO samples are at most
RESPONSE_LENGTH tokens. tests/conftest.py collects this folder only when HFPPO_REAL_MODEL names the model's folder, so
`make test` and CI never run it. Everything it writes goes under pytest's temporary folder.
"""

import gc
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from gradio_client import Client
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from test_export import adapter_model, merge_tolerance
from transformers import AutoModelForCausalLM, AutoTokenizer

import chat_web
import common
import train_ppo
from conftest import FLOAT32_EPS, REAL_MODEL_VARIABLE, free_port, run_main
from hfppo import audit, data_files, paths, sampling, training

pytestmark = pytest.mark.slow
MODEL = Path(os.environ.get(REAL_MODEL_VARIABLE, ""))
if not (MODEL / "config.json").is_file():
    pytest.skip(
        f"{REAL_MODEL_VARIABLE}={MODEL} holds no model (config.json): pass a local model folder, make test-real "
        "MODEL=path/to/Qwen2.5-0.5B-Instruct",
        allow_module_level=True,
    )

CONFIGS = paths.ROOT / "configs" / "cpu"
TRAIN_ROWS = 2  # one batch of two sequences (pairs for the reward model): a step costs seconds, not minutes
RESPONSE_LENGTH = 16  # tokens: enough to see an answer start, stop and score
ADAPTER_B_STD = 0.02  # a trained adapter's B is nonzero; drawn at this scale it moves the logits by whole nats
ANSWER_S = 300  # one question on the page, three columns of RESPONSE_LENGTH tokens, on a busy 2-core machine


def stage_flags(data: Path) -> list:
    """What every training stage here takes: the rows, one step of one batch of TRAIN_ROWS."""
    return [
        "--dataset_name", data, "--max_steps", 1, "--per_device_train_batch_size", TRAIN_ROWS,
        "--gradient_accumulation_steps", 1,
    ]  # fmt: skip


def free_models() -> None:
    """Free the models a stage or test left in reference cycles (a Trainer and its callbacks, a PeftModel), which
    Python's collector, counting objects rather than bytes, might keep for several more stages: each holds gigabytes
    (a stage's model, gradients and optimizer state come to 10 GB at 0.5B)."""
    gc.collect()


@pytest.fixture(autouse=True)
def models_freed_after_each_test():
    yield
    free_models()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The runs' working folder (checkpoint/ and tensorboard/ land in it), with data.jsonl: the sample's first
    TRAIN_ROWS + 1 rows of distinct questions, so that --eval_fraction's default holds out one of them."""
    folder = tmp_path_factory.mktemp("real")
    rows, questions = [], set()
    for row in map(json.loads, paths.SAMPLE_DATA.read_text(encoding="utf-8").splitlines()):
        if row["question"] not in questions and len(rows) < TRAIN_ROWS + 1:
            rows.append(row)
            questions.add(row["question"])
    (folder / "data.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    train, held_out = common.split_held_out(common.load_preference_data(folder / "data.jsonl"), 0.1)
    assert (len(train), len(held_out)) == (TRAIN_ROWS, 1)
    return folder


@torch.no_grad()
def batch_loss(trainer, batch: dict) -> float:
    """The loss the Trainer minimises, on `batch`."""
    return trainer.compute_loss(trainer.model, batch).item()


@torch.no_grad()
def reward_margins(trainer, batch: dict) -> torch.Tensor:
    """r_chosen - r_rejected of each pair of a reward model's batch (RewardTrainer's collator puts every chosen
    sequence first, then the rejected ones in the same order)."""
    chosen, rejected = trainer.model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].chunk(2)
    return chosen - rejected


def run_trainer_stage(script: str, flags: list, workdir: Path, measure=None) -> dict:
    """`script` (a Trainer stage) run in this process with `flags`, for one step: the loss on its one batch before
    and after the step (the same computation on the same batch: any change is the step's), and the dataset the
    Trainer trained on; `measure(trainer, batch)`, if given, before and after too."""
    seen = {}

    def measured(trainer, settings, resume):
        (batch,) = list(trainer.get_train_dataloader())  # the run's one batch: every training row
        seen["dataset"] = trainer.train_dataset
        seen["before"] = batch_loss(trainer, batch)
        seen["measured_before"] = measure and measure(trainer, batch)
        result = train_stage(trainer, settings, resume)
        seen["after"] = batch_loss(trainer, batch)
        seen["measured_after"] = measure and measure(trainer, batch)
        return result

    train_stage = training.train_stage
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "train_stage", measured)
        result = run_main(script, *flags, cwd=workdir)
    free_models()
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"{script}: loss on its batch {seen['before']:.4f} before the step, {seen['after']:.4f} after")
    return seen


@pytest.fixture(scope="module")
def sft_run(workdir) -> dict:
    flags = ["--config", CONFIGS / "sft.yaml", "--model_name_or_path", MODEL, *stage_flags(workdir / "data.jsonl")]
    return run_trainer_stage("train_sft.py", flags, workdir)


@pytest.fixture(scope="module")
def rm_run(workdir) -> dict:
    flags = ["--config", CONFIGS / "rm.yaml", "--model_name_or_path", MODEL, *stage_flags(workdir / "data.jsonl")]
    return run_trainer_stage("train_rm.py", [*flags, "--eval_strategy", "no"], workdir, reward_margins)


@pytest.fixture(scope="module")
def dpo_run(workdir, sft_run) -> dict:
    """train_dpo.py at its defaults (there is no CPU config) on the SFT model above, no held-out evaluation."""
    flags = ["--sft_model_path", workdir / paths.SFT_DIR, *stage_flags(workdir / "data.jsonl")]
    return run_trainer_stage("train_dpo.py", [*flags, "--eval_strategy", "no", "--eval_on_start", "false"], workdir)


@pytest.fixture(scope="module")
def ppo_run(workdir, sft_run, rm_run) -> dict:
    """train_ppo.py with the CPU preset's config (the critic from the reward model) on the SFT and reward models
    above: one update of TRAIN_ROWS answers, one PPO epoch, one optimizer step; what its rollout gave, and the PPO
    loss of that rollout before and after the step."""
    seen = {}

    def measured_rollout(*args, **kwargs):
        seen["experience"], seen["figures"] = rollout(*args, **kwargs)
        return seen["experience"], seen["figures"]

    def measured_update(model, experience, config, *args):
        every_row = sampling.trimmed(experience, torch.arange(len(experience["lengths"])))
        with torch.no_grad():
            seen["before"] = train_ppo.ppo_loss(model, every_row, config)[1]
        stats = ppo_update(model, experience, config, *args)
        with torch.no_grad():
            seen["after"] = train_ppo.ppo_loss(model, every_row, config)[1]
        seen["stats"] = stats
        return stats

    rollout, ppo_update = train_ppo.rollout, train_ppo.ppo_update
    flags = [
        "--config", CONFIGS / "ppo.yaml", "--dataset_name", workdir / "data.jsonl",
        "--sft_model_path", workdir / paths.SFT_DIR, "--reward_model_path", workdir / paths.RM_DIR,
        "--value_model_path", workdir / paths.RM_DIR,
        "--total_episodes", TRAIN_ROWS, "--per_device_train_batch_size", TRAIN_ROWS,
        "--gradient_accumulation_steps", 1, "--local_rollout_forward_batch_size", TRAIN_ROWS,
        "--num_mini_batches", 1, "--num_ppo_epochs", 1, "--response_length", RESPONSE_LENGTH,
        "--num_eval_questions", 0, "--save_steps", 0,
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_ppo, "rollout", measured_rollout)
        patch.setattr(train_ppo, "ppo_update", measured_update)
        result = run_main("train_ppo.py", *flags, cwd=workdir)
    free_models()
    assert result.returncode == 0, result.stderr[-3000:]
    for part in ("policy_loss", "value_loss"):
        print(f"train_ppo.py: {part} {seen['before'][part]:.4f} before the step, {seen['after'][part]:.4f} after")
    return seen


# ----------------------------------------------------------------------------------------------------------------
# The chat template, eos and pad of the real tokenizer


def template_default_system_prompt(tokenizer) -> str:
    """The system prompt the chat template writes for a conversation that brings none (Qwen's "You are Qwen, ...")."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "?"}], tokenize=False)
    start = "<|im_start|>system\n"
    return text[text.index(start) + len(start) : text.index("<|im_end|>")] if start in text else ""


@pytest.mark.parametrize("system", [paths.DEFAULT_SYSTEM_PROMPT, "", "row"])
def test_the_prompt_holds_one_system_turn_and_never_the_templates_default(tokenizer, system):
    """The run's --system_prompt (or a row's own, which wins; or an empty one) is the prompt's one system turn: the
    template's default system prompt, which it writes when a conversation has none, neither replaces nor joins it."""
    default = template_default_system_prompt(tokenizer)
    assert default, "the real template writes a default system prompt: the case this test is for"
    row = {"question": "吃了没?", "system": "你是一个客服." if system == "row" else ""}
    text = tokenizer.decode(common.prompt_ids(tokenizer, row, "" if system == "row" else system))
    expected_system = row["system"] or system
    assert text == (
        f"<|im_start|>system\n{expected_system}<|im_end|>\n<|im_start|>user\n吃了没?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert default not in text


def test_a_conversation_ends_at_im_end_and_pad_is_another_token(tokenizer):
    """The reward is read at the answer's <|im_end|> (the eos the policies stop at); pad must be another token, or the
    reward model would take the answer's end for padding (common.check_pad_token)."""
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    common.check_pad_token(tokenizer, str(MODEL))
    row = {"question": "吃了没?"}
    ids = common.conversation_ids(tokenizer, row, paths.DEFAULT_SYSTEM_PROMPT, "吃过了。")
    prompt = common.prompt_ids(tokenizer, row, paths.DEFAULT_SYSTEM_PROMPT)
    assert ids[: len(prompt)] == prompt and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[len(prompt) :]) == "吃过了。<|im_end|>"


def test_sampled_answers_stop_at_im_end_and_keep_nothing_after_it(tokenizer):
    """The real model, asked for one word, ends its answer with <|im_end|> well before RESPONSE_LENGTH tokens: the
    pipeline's sampling (sampling.sampling_config) stops there, and the decoded answer holds no special token."""
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    row = {"question": "1+1=? Answer with the number only."}
    prompts = [common.prompt_ids(tokenizer, row, "You are a helpful assistant.")] * 2
    torch.manual_seed(0)
    batch = sampling.generate(model, tokenizer, prompts, RESPONSE_LENGTH, 0.7, len(prompts), "cpu")
    assert (batch["lengths"] < RESPONSE_LENGTH).all(), sampling.answer_texts(tokenizer, batch)
    for answer, length in zip(batch["responses"], batch["lengths"]):
        assert answer[length - 1] == tokenizer.eos_token_id
        assert (answer[length:] == tokenizer.pad_token_id).all()
    assert all(text.strip() == "2" for text in sampling.answer_texts(tokenizer, batch))


# ----------------------------------------------------------------------------------------------------------------
# PPO's fused LM head on the real vocabulary


def test_the_fused_head_gives_the_full_logits_log_probs_entropy_and_gradients(tokenizer):
    """tests/test_ppo_algorithm.py's check of TRL's fused LM head (log-probs of the answer a tile of the vocabulary at
    a time) against the full logits, on the real model with PPO's adapter, B drawn as a trained adapter's, and answers
    it sampled. The same tolerance: a logit is a dot product of hidden_size terms, so the two computations' logits
    z = h.w / T differ by at most dz = hidden_size FLOAT32_EPS max sum|h_i w_i| / T, and a log-prob by 2 dz plus
    V FLOAT32_EPS for the log-sum-exp over the V-token vocabulary (151,936 here: 0.018 nats, where the tiny model's
    bound is under 1e-3); an entropy by that times (1 + max|z|). The gradients of the summed log-probs through the
    two heads are held to 1e-4 relative, as there."""
    torch.manual_seed(0)
    config = train_ppo.PPOConfig()
    lora_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=config.lora_target_modules)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    policy = get_peft_model(model, lora_config).eval()
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=ADAPTER_B_STD)
    questions = ["吃了没?", "推荐一本书"]
    prompts = [common.prompt_ids(tokenizer, {"question": q}, paths.DEFAULT_SYSTEM_PROMPT) for q in questions]
    temperature = config.temperature
    with sampling.merged(policy) as merged:
        batch = sampling.generate(merged, tokenizer, prompts, RESPONSE_LENGTH, temperature, len(prompts), "cpu")
    responses = batch["responses"]
    inputs = sampling.sequence_inputs(batch["queries"], batch["query_mask"], responses, batch["lengths"])
    mask, width = sampling.answer_mask(batch["lengths"], responses.shape[1]), responses.shape[1]

    results = []
    for fused in (True, False):
        policy.zero_grad()
        if fused:
            logprobs, entropy = sampling.answer_logprobs(policy, inputs, responses, temperature)
        else:
            output = policy(**inputs, logits_to_keep=width + 1, output_hidden_states=True)
            log_p = (output.logits[:, :-1] / temperature).log_softmax(-1)
            logprobs, entropy = log_p.gather(-1, responses[..., None])[..., 0], -(log_p.exp() * log_p).sum(-1)
        logprobs[mask].sum().backward()
        grads = {name: p.grad.clone() for name, p in policy.named_parameters() if p.grad is not None}
        results.append((logprobs.detach()[mask], entropy.detach()[mask], grads))
    (logprobs, entropy, grads), (full_logprobs, full_entropy, full_grads) = results

    with torch.no_grad():  # the full pass's last hidden states (after the final norm) and logits
        hidden = output.hidden_states[-1][:, -width - 1 : -1][mask]
        head = policy.get_base_model().get_output_embeddings().weight
        dz = hidden.shape[-1] * FLOAT32_EPS * (hidden.abs() @ head.abs().T).max().item() / temperature
        max_z = (hidden @ head.T).abs().max().item() / temperature
        raw = output.logits[:, :-1].log_softmax(-1).gather(-1, responses[..., None])[..., 0]
    tolerance = 2 * dz + head.shape[0] * FLOAT32_EPS
    print(f"fused head: log-probs {(logprobs - full_logprobs).abs().max():.3g} apart, tolerance {tolerance:.3g}")
    assert (logprobs - full_logprobs).abs().max() <= tolerance
    assert (entropy - full_entropy).abs().max() <= tolerance * (1 + max_z)
    # the log-probs of softmax(logits / T), the distribution sampled from: those at T = 1 lie far beyond the bound
    assert (raw[mask] - full_logprobs).abs().max() > 10 * tolerance
    assert grads.keys() == full_grads.keys() and any("lora_A" in name for name in grads)
    for name in grads:
        assert (grads[name] - full_grads[name]).norm() <= 1e-4 * full_grads[name].norm(), name


# ----------------------------------------------------------------------------------------------------------------
# One optimizer step of each stage lowers its loss on the batch it took


def test_one_sft_step_lowers_the_loss_on_its_batch_and_trains_on_the_answer_to_its_im_end(sft_run, workdir, tokenizer):
    """SFT's causal-LM loss on the answers of its batch falls with one step at configs/cpu/sft.yaml's learning rate;
    the tokens it trains on are each answer and its <|im_end|> (so the model learns to stop), after the prompt PPO
    samples from."""
    assert sft_run["after"] < sft_run["before"], sft_run
    answers = {row["chosen"]: row for row in common.load_preference_data(workdir / "data.jsonl")}
    for example in sft_run["dataset"]:
        ids, labels = example["input_ids"], example["labels"]
        start = next(i for i, label in enumerate(labels) if label != sampling.IGNORE_INDEX)
        assert labels[start:] == ids[start:]  # every token from the answer's first on, and none before it
        completion = tokenizer.decode(ids[start:])
        answer = completion.removesuffix("\n").removesuffix("<|im_end|>")
        assert completion.startswith(answer) and answer in answers and tokenizer.eos_token_id in ids[start:]
        assert ids[:start] == common.prompt_ids(tokenizer, answers[answer], paths.DEFAULT_SYSTEM_PROMPT)


def test_the_saved_reward_model_finds_padding_by_the_pad_token_not_eos(rm_run, workdir, tokenizer):
    config = json.loads((workdir / paths.RM_DIR / "config.json").read_text())
    assert config["pad_token_id"] == tokenizer.pad_token_id != tokenizer.eos_token_id


def test_one_reward_model_step_ranks_its_pairs_further_apart(rm_run):
    """The step at configs/cpu/rm.yaml's learning rate moves each pair's margin r_chosen - r_rejected up: the
    pairwise (Bradley-Terry) part of the loss falls."""
    assert (rm_run["measured_after"] > rm_run["measured_before"]).all(), rm_run


@pytest.mark.xfail(
    strict=True,
    reason="configs/cpu/rm.yaml's first AdamW step (every parameter at learning rate 1e-5, no warmup) ranks both "
    "pairs right (mean margin -0.17 to +2.50) but shifts every reward by about +10 (mean -1.35 to +8.73), so the "
    "centring term 0.01 (r_chosen + r_rejected)^2 lifts the loss on its own batch from 0.85 to 3.13 on "
    "Qwen2.5-Coder-0.5B-Instruct; at 1e-6 it falls to 0.54 (issue 37, item 3 tunes the preset)",
)
def test_one_reward_model_step_lowers_its_loss(rm_run):
    """The loss the reward model trains on (pairwise, with its centring term) falls on its batch with one step at
    configs/cpu/rm.yaml's learning rate."""
    assert rm_run["after"] < rm_run["before"], rm_run


def test_one_dpo_step_lowers_its_loss(dpo_run):
    """DPO's loss starts at log 2 (a fresh adapter: the policy is its reference) and falls with one step of the
    adapter at train_dpo.py's learning rate. Both losses are the same computation on the same batch, so any change is
    the step's (tests/README.md, rule 1)."""
    assert abs(dpo_run["before"] - math.log(2)) <= FLOAT32_EPS  # log 2 rounded to float32 once
    assert dpo_run["after"] < dpo_run["before"], dpo_run


def test_ppo_starts_at_kl_0_and_one_step_lowers_its_policy_loss(ppo_run, tokenizer):
    """Before the first update the policy is the SFT model with a fresh adapter (B = 0 adds exactly 0.0): on the
    answers it sampled, its log-probs are its reference's to the bit, so every token's KL is 0, and the first
    minibatch's ratio is 1. One optimizer step of the adapter at configs/cpu/ppo.yaml's learning rate lowers the
    clipped policy loss of that rollout; the answers that stopped end at <|im_end|>."""
    experience, figures = ppo_run["experience"], ppo_run["figures"]
    assert experience["mask"].sum() > 0
    assert (figures["kl"] == 0).all()
    # the first micro batch's statistics, taken before the step: 0.5 x the mean squared log-ratio, where 1e-6 would
    # be a log-ratio of 1.4e-3, far above rounding and far below any step
    assert ppo_run["stats"]["approxkl"][0].item() < 1e-6 and ppo_run["stats"]["clipfrac"][0].item() == 0
    assert ppo_run["after"]["policy_loss"] < ppo_run["before"]["policy_loss"], ppo_run
    stopped = experience["lengths"] < RESPONSE_LENGTH
    for answer, length in zip(experience["responses"][stopped], experience["lengths"][stopped]):
        assert answer[length - 1] == tokenizer.eos_token_id


@pytest.mark.xfail(
    strict=True,
    reason="configs/cpu/ppo.yaml's first AdamW step of the critic (every parameter of the reward model at "
    "critic_learning_rate 1e-5, no warmup) raises the value loss of its rollout: 3.95 to 62.5 on "
    "Qwen2.5-Coder-0.5B-Instruct (issue 37, item 3 tunes the preset)",
)
def test_one_ppo_step_lowers_its_value_loss(ppo_run):
    """The clipped value loss of the rollout falls with one step of the critic at configs/cpu/ppo.yaml's rate."""
    assert ppo_run["after"]["value_loss"] < ppo_run["before"]["value_loss"], (ppo_run["before"], ppo_run["after"])


# ----------------------------------------------------------------------------------------------------------------
# What reads the trained models: the audit, the export, the page


def test_the_reward_models_audit_runs(rm_run, workdir):
    """eval_rm.py on the reward model the real weights made: the metrics, then the audit with every probe scored."""
    result = run_main("eval_rm.py", "--model_path", workdir / paths.RM_DIR, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\nAudit: does the score follow the style" in result.stdout
    metrics = json.loads((workdir / paths.RM_DIR / paths.METRICS_FILE).read_text())
    probes = audit.load_probes(audit.PROBES_FILE)
    assert [probe["answer"] for probe in metrics["audit"]["probes"]] == [probe["answer"] for probe in probes]
    assert all(math.isfinite(probe["score"]) for probe in metrics["audit"]["probes"])
    assert math.isfinite(metrics["mean_margin"]) and metrics["pairs"] == 1


def test_export_gives_the_adapter_models_logits(ppo_run, workdir, tokenizer):
    """export.py on PPO's adapter as train_ppo.py saved it on the real SFT model, its B drawn as a trained adapter's
    (one step leaves it near 0, where an export without the adapter would pass too): the merged model's logits lie
    within tests/test_export.py's merge_tolerance of the adapter model's on a training and the held-out
    conversation, and the adapter moves some logit beyond it."""
    adapter, merged = workdir / "adapter", workdir / "merged"
    shutil.copytree(workdir / paths.PPO_DIR, adapter, ignore=shutil.ignore_patterns("value"))
    weights = load_file(adapter / "adapter_model.safetensors")
    generator = torch.Generator().manual_seed(0)
    for name, tensor in weights.items():
        if "lora_B" in name:
            weights[name] = torch.randn(tensor.shape, generator=generator) * ADAPTER_B_STD
    save_file(weights, adapter / "adapter_model.safetensors")
    result = run_main("export.py", "--adapter_path", adapter, "--output_dir", merged, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]

    model = adapter_model(adapter)
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    rows = common.load_preference_data(workdir / "data.jsonl").select([0, TRAIN_ROWS])
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([common.conversation_ids(tokenizer, row, row["system"], row["chosen"])])
            output = model(ids, output_hidden_states=True)
            tolerance = merge_tolerance(model, output.hidden_states[-1])
            difference = (plain(ids).logits - output.logits).abs()
            print(f"export: logits {difference.max():.3g} apart, tolerance from {tolerance.min():.3g}")
            assert (difference <= tolerance).all().item(), f"logits up to {difference.max():.3g} apart"
            with model.disable_adapter():
                assert ((model(ids).logits - output.logits).abs() > tolerance).any().item()


def test_the_page_lists_and_answers_with_the_real_models(ppo_run, workdir, tokenizer):
    """chat_web.py on the real base, the SFT model, PPO's adapter on it and the reward model, asked through Gradio's
    HTTP API as the page's Ask button asks: a column for each with its answer, scored by the reward model (one
    tokenizer for all) and the judge; the methods not trained here are listed as missing."""
    args = chat_web.WebArguments(
        base_model_path=str(MODEL),
        sft_model_path=str(workdir / paths.SFT_DIR),
        ppo_model_path=str(workdir / paths.PPO_DIR),
        ppo_base_model_path=str(workdir / "none" / "ppo_base"),
        dpo_model_path=str(workdir / "none" / "dpo"),
        grpo_model_path=str(workdir / "none" / "grpo"),
        reward_model_path=str(workdir / paths.RM_DIR),
        max_new_tokens=RESPONSE_LENGTH,
    )
    models = chat_web.load_models(args)
    assert [column.name for column in models.columns] == ["base", "sft", "ppo"]
    assert set(models.missing) == {"ppo_base", "dpo", "grpo"}
    assert all(column.reward_problem is None for column in models.columns)
    page = chat_web.build_page(models, args)
    port = free_port()
    chat_web.serve(page, "127.0.0.1", port, prevent_thread_lock=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        values = ("吃了没?", args.system_prompt, args.temperature, args.max_new_tokens, args.seed)
        shown = client.submit(*values, api_name="/on_ask").result(timeout=ANSWER_S)
    finally:
        page.close()
    for column, (answer, line) in zip(models.columns, zip(shown[::2], shown[1::2])):
        assert answer.strip() and data_files.control_token_problem(answer) is None, (column.name, answer)
        assert "reward **" in line and "judge\\: " in line, (column.name, line)
