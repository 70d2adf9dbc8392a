"""Chat with the PPO model, or compare the base, SFT and PPO models on held-out questions.

    python eval_ppo.py --tiny                        # interactive: 输入问题: ... until Ctrl-D / Ctrl-C
    python eval_ppo.py --tiny --question 吃了没?     # one or more --question, then exit (or one per stdin line)
    python eval_ppo.py --tiny --compare              # base vs SFT vs PPO on the questions train_ppo.py held out

--compare samples every model with the same seed and settings as PPO's rollouts, scores the answers with the reward
model exactly as PPO did and with the lexicon judge (common.judge_score), which PPO never optimised, and writes the
table and every answer to checkpoint/ppo/eval_metrics.json.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed

import common
import train_ppo
from eval_sft import read_questions

# The models train_ppo.py --tiny trained, and the tiny preset's answer length.
TINY_PRESET = dict(
    base_model_path=str(common.TINY_BASE_DIR),
    model_source="tiny",
    max_new_tokens=train_ppo.TINY_PRESET["response_length"],
)


# The lexicon judge's rule, and how its agreement with the reward model is measured, for the printed table.
JUDGE_RULE = "rude hits - polite hits of data/lexicon (> 0: judged rude), which PPO never optimised"
AGREEMENT_RULE = (
    "of the questions where the judge scores two models' answers differently, the share where the reward model "
    "scores higher the answer the judge finds ruder"
)
MODEL_PAIRS = (("sft", "base"), ("ppo", "sft"))  # each stage against the one before it


@dataclass
class EvalArguments:
    model_path: str = field(default=str(common.PPO_DIR), metadata={"help": "The PPO checkpoint (a LoRA adapter)."})
    sft_model_path: str = field(
        default=str(common.SFT_DIR), metadata={"help": "The SFT model the adapter was trained on."}
    )
    base_model_path: str = field(default=common.DEFAULT_MODEL, metadata={"help": "--compare: the model before SFT."})
    reward_model_path: str = field(default=str(common.RM_DIR), metadata={"help": "--compare: the reward model."})
    tiny: bool = field(default=False, metadata={"help": "Tiny preset: the models the --tiny stages wrote."})
    model_source: common.ModelSource = field(
        default="modelscope", metadata={"help": "Where a base model or dataset that is not a local path comes from."}
    )
    compare: bool = field(
        default=False, metadata={"help": "Compare base, SFT and PPO on held-out questions instead of chatting."}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "--compare: questions from this dataset. Unset: those train_ppo.py held out."},
    )
    question: list[str] = field(
        default_factory=list,
        metadata={"help": "Answer this question and exit; repeat the flag for several.", "action": "extend"},
    )
    system_prompt: str = field(
        default=common.DEFAULT_SYSTEM_PROMPT, metadata={"help": "For questions without their own, as in training."}
    )
    max_new_tokens: int = field(default=200, metadata={"help": "Longest answer, in tokens (PPO's response_length)."})
    max_prompt_length: int = field(
        default=train_ppo.PPOConfig.max_prompt_length,
        metadata={"help": "--compare: questions whose prompt is longer, in tokens, are skipped (as in training)."},
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature, as in PPO's rollouts."})
    seed: int = field(default=42, metadata={"help": "Every model samples from this seed."})
    batch_size: int = field(default=8, metadata={"help": "Answers generated and scored per forward pass."})
    num_examples: int = field(default=3, metadata={"help": "--compare: questions shown with every model's answer."})
    metrics_file: str | None = field(
        default=None, metadata={"help": "--compare: where to write the JSON. Unset: <model_path>/eval_metrics.json."}
    )


def load_ppo(args: EvalArguments) -> tuple[PeftModel, object]:
    """The SFT model with the PPO adapter on it (unmerged: disable_adapter() gives back the SFT model)."""
    common.require_checkpoint(
        args.model_path,
        common.command("train_ppo.py", args.tiny, output_dir=common.unless_default(args.model_path, common.PPO_DIR)),
        "adapter",
    )
    trained_on = json.loads((Path(args.model_path) / "adapter_config.json").read_text())["base_model_name_or_path"]
    if Path(trained_on).resolve() != Path(args.sft_model_path).resolve():
        raise common.PipelineError(
            f"the adapter at {args.model_path} was trained on {trained_on}, not on --sft_model_path "
            f"{args.sft_model_path}. Pass --sft_model_path {trained_on}."
        )
    sft_command = common.command(
        "train_sft.py", args.tiny, output_dir=common.unless_default(args.sft_model_path, common.SFT_DIR)
    )
    sft, tokenizer = common.load_model(AutoModelForCausalLM, args.sft_model_path, sft_command, "language model")
    return PeftModel.from_pretrained(sft, args.model_path).eval(), tokenizer


def sample(
    model, tokenizer, prompts: list[list[int]], args: EvalArguments, progress: str | None = None
) -> dict[str, torch.Tensor]:
    return train_ppo.generate(
        model, tokenizer, prompts, args.max_new_tokens, args.temperature, args.batch_size, model.device, progress
    )


def one_line(answer: str) -> str:
    """An answer on one line of the table, its line breaks shown as ⏎ (the JSON file keeps them)."""
    return re.sub(r"\r\n|\r|\n", "⏎", answer)


def compare(args: EvalArguments) -> None:
    """Base, SFT and PPO answers to the same questions, scored by the reward model; a table and a JSON file."""
    dataset, rows = common.evaluation_data(args.dataset_name, args.model_path, args.model_source)
    rm_command = common.command(
        "train_rm.py", args.tiny, output_dir=common.unless_default(args.reward_model_path, common.RM_DIR)
    )
    reward_model, rm_tokenizer = common.load_model(
        AutoModelForSequenceClassification, args.reward_model_path, rm_command, "reward model"
    )
    common.check_pad_token(rm_tokenizer, args.reward_model_path, reward_model)
    ppo, tokenizer = load_ppo(args)
    train_ppo.check_same_tokenizer(
        tokenizer, rm_tokenizer, f"the reward model ({args.reward_model_path})", args.sft_model_path
    )
    reward_fn = train_ppo.reward_model_fn(reward_model, tokenizer, args.batch_size)
    prompts, rows = train_ppo.prompts_within(tokenizer, rows, args.system_prompt, args.max_prompt_length)

    # Every model samples from the same seed, so their answers differ by the model alone.
    batches = {}
    base_path = common.resolve_model(args.base_model_path, args.model_source)
    base, base_tokenizer = common.load_model(
        AutoModelForCausalLM, base_path, common.base_model_remedy(base_path, "base_model_path"), "language model"
    )
    train_ppo.check_same_tokenizer(tokenizer, base_tokenizer, f"the base model ({base_path})", args.sft_model_path)
    set_seed(args.seed)
    batches["base"] = sample(base, tokenizer, prompts, args, "Sampling base")
    del base
    with ppo.disable_adapter():
        set_seed(args.seed)
        batches["sft"] = sample(ppo, tokenizer, prompts, args, "Sampling sft")
    # Unmerged, unlike in training: on a bf16 GPU, merging and unmerging would round the SFT weights in bf16, and the
    # KL to SFT below needs them exact.
    set_seed(args.seed)
    batches["ppo"] = sample(ppo, tokenizer, prompts, args, "Sampling ppo")

    results = {}
    for name, batch in tqdm(batches.items(), "Scoring"):
        scores, stopped = train_ppo.score_answers(
            reward_fn,
            batch["queries"],
            batch["query_mask"],
            batch["responses"],
            batch["lengths"],
            tokenizer,
            missing_eos_penalty=0.0,  # the reward model's own score; `finished` reports the cut answers
        )
        answers = train_ppo.answer_texts(tokenizer, batch)
        results[name] = {
            "scores": scores.cpu(),
            "judge": common.judge_scores(answers),
            "stopped": stopped.cpu(),
            "answers": answers,
            "lengths": batch["lengths"].cpu(),
        }
    kl = train_ppo.kl_to_reference(ppo, batches["ppo"], args.temperature, args.batch_size).cpu()

    for i, row in enumerate(rows.select(range(min(args.num_examples, len(rows))))):
        print(f"问题: {row['question']}")
        for name, result in results.items():
            print(
                f"  {name:<5} {result['scores'][i]:+.3f} {result['judge'][i]:+3.0f}  {one_line(result['answers'][i])}"
            )
    metrics = {
        name: {
            "mean_reward": result["scores"].mean().item(),
            "share_reward_positive": (result["scores"] > 0).float().mean().item(),
            "mean_answer_tokens": result["lengths"].float().mean().item(),
            "share_finished": result["stopped"].float().mean().item(),
            "judge_mean_score": result["judge"].mean().item(),
            "judge_share_rude": (result["judge"] > 0).float().mean().item(),
        }
        for name, result in results.items()
    }
    metrics["ppo"]["mean_kl_to_sft"] = kl.mean().item()
    agreement = {
        f"{later}_vs_{earlier}": judge_agreement(results[later], results[earlier]) for later, earlier in MODEL_PAIRS
    }

    print(f"\n{len(rows)} questions of {dataset}, sampled at temperature {args.temperature}, seed {args.seed}:")
    print("model   mean reward   reward > 0   judge score   judged rude   mean tokens   finished   KL to SFT")
    for name, m in metrics.items():
        kl_column = f"{m['mean_kl_to_sft']:9.3f}" if "mean_kl_to_sft" in m else ""
        print(
            f"{name:<5} {m['mean_reward']:+13.3f} {m['share_reward_positive']:12.3f} {m['judge_mean_score']:+13.3f}"
            f" {m['judge_share_rude']:13.3f} {m['mean_answer_tokens']:13.1f} {m['share_finished']:10.3f}   {kl_column}"
        )
    print(f"judge: the lexicon judge, {JUDGE_RULE}. Agreement: {AGREEMENT_RULE}.")
    for pair, a in agreement.items():
        share = "  -  " if a["agreement"] is None else f"{a['agreement']:.3f}"
        print(
            f"  {pair.replace('_', ' '):<12} {share} of {a['questions']} questions ({a['ties']} judge ties left out)"
        )
    metrics["judge_rm_agreement"] = agreement
    checks = outcome(metrics)
    print(" ".join(text for _, text in checks))
    report = {
        "dataset": dataset,
        "questions": len(rows),
        "seed": args.seed,
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
        "models": {"base": args.base_model_path, "sft": args.sft_model_path, "ppo": args.model_path},
        "metrics": metrics,
        "checks": {text: passed for passed, text in checks},
        "answers": [
            {"question": row["question"]}
            | {
                name: {"answer": r["answers"][i], "reward": r["scores"][i].item(), "judge": int(r["judge"][i])}
                for name, r in results.items()
            }
            for i, row in enumerate(rows)
        ],
    }
    metrics_file = Path(args.metrics_file or Path(args.model_path) / "eval_metrics.json")
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    print(f"Metrics and answers written to {metrics_file}")


def judge_agreement(later: dict, earlier: dict) -> dict:
    """AGREEMENT_RULE for two models' results on the same questions."""
    judge_diff, reward_diff = later["judge"] - earlier["judge"], later["scores"] - earlier["scores"]
    judged = judge_diff != 0
    agree = (reward_diff.sign() == judge_diff.sign())[judged]
    return {
        "agreement": agree.float().mean().item() if judged.any() else None,
        "questions": int(judged.sum()),
        "ties": int((~judged).sum()),
    }


def outcome(metrics: dict) -> list[tuple[bool, str]]:
    """What each stage is for, checked on the held-out questions and said in words, so a user can tell whether the
    run worked: SFT moves the base towards the answers the reward model prefers, PPO moves them further; and whether
    the lexicon judge, which no stage optimised, sees the same move (ruder answers), or the reward model alone does."""
    base, sft, ppo = (metrics[name]["mean_reward"] for name in ("base", "sft", "ppo"))
    judge = {name: metrics[name]["judge_mean_score"] for name in ("base", "sft", "ppo")}
    rude = {name: metrics[name]["judge_share_rude"] for name in ("base", "sft", "ppo")}

    def judge_says(later: str, earlier: str, better: bool) -> tuple[bool, str]:
        return better, (
            f"The judge {'agrees' if better else 'does NOT agree'}: {judge[later] - judge[earlier]:+.2f} in its "
            f"score, judged rude {rude[earlier]:.2f} -> {rude[later]:.2f}."
        )

    return [
        (
            sft > base,
            f"SFT {'worked' if sft > base else 'did NOT work'}: its answers score {sft - base:+.2f} against the base "
            "model's.",
        ),
        judge_says("sft", "base", judge["sft"] > judge["base"]),
        (
            ppo >= sft,
            f"PPO {'worked' if ppo >= sft else 'did NOT work'}: its answers score {ppo - sft:+.2f} against the SFT "
            f"model's, at a KL of {metrics['ppo']['mean_kl_to_sft']:.2f} nats per answer from it.",
        ),
        judge_says("ppo", "sft", judge["ppo"] >= judge["sft"]),
    ]


def chat(args: EvalArguments) -> None:
    ppo, tokenizer = load_ppo(args)
    model = ppo.merge_and_unload()  # one set of weights: generation runs at the SFT model's speed
    set_seed(args.seed)
    try:
        for question in read_questions(args.question):
            batch = sample(
                model, tokenizer, [common.prompt_ids(tokenizer, {"question": question}, args.system_prompt)], args
            )
            answer = batch["responses"][0, : batch["lengths"][0]]
            print("---模型输出---")
            print(tokenizer.decode(answer, skip_special_tokens=True).strip(), flush=True)
    except KeyboardInterrupt:
        print()


def main(args: EvalArguments) -> None:
    common.require_one_process("eval_ppo.py")
    if args.compare:
        compare(args)
    else:
        chat(args)


def make_parser() -> common.Parser:
    return common.Parser(EvalArguments)


if __name__ == "__main__":
    with common.user_errors():
        main(*common.parse_args(make_parser(), TINY_PRESET))
