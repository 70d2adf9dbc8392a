"""PPO throughput: a fixed number of train_ppo.py updates on random-weight models of a given shape, timed per phase
(generation, scoring, optimisation), with tokens/s, peak memory and model FLOP utilisation, and the same run through
TRL 1.12's PPOTrainer (the last TRL with PPO) on the same models, prompts and caps, side by side with the ratio and
its ceiling (the ratio were our generation and scoring free).

    python benchmarks/ppo_throughput.py --tiny                           # tiny shape on a CPU, under a minute
    python benchmarks/ppo_throughput.py --shape qwen2.5-0.5b             # 2 updates x 4 answers of 16 tokens
    bash benchmarks/setup_trl112.sh                                      # once: TRL 1.12 in .venv-trl112
    bash benchmarks/gpu.sh                                               # on a GPU: 0.5B shape, bf16, 200 tokens

Weights do not change what a pass costs, so the models are random: the policy/reference (a causal LM), the reward
model and the critic (the causal LM's checkpoint plus a new score head, as train_ppo.py builds it), all of one shape,
built once into --work_dir. The tokenizer is the tiny preset's (about 2,300 ids, within every shape's vocabulary; the
0.5B shape keeps Qwen2.5's 151,936-row embedding and LM head, so its passes cost what the real model's do). Every
answer is exactly --response_length tokens (the random policy's generation_config.json suppresses its stop token, and
both sides' generate() inherit that), and every prompt has the same length (the bundled questions whose prompt has
the most common length), so both sides do the same work and the FLOP count is exact up to attention.

Each side runs in a process of its own, as a user runs it: train_ppo.py with its flags, its figures read back from
what it writes (train_results.json and its TensorBoard scalars), and benchmarks/trl112_ppo.py in the TRL 1.12 venv.
"""

import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules, from any working folder

import common  # noqa: E402
from hfppo import charts, checkpoints, cli, data_files, errors, lifecycle, outputs, paths, runtime, tiny  # noqa: E402

SHAPES = {
    "tiny": dict(tiny.TINY_MODEL_CONFIG),
    # Qwen2.5-0.5B's config.json, by hand (no hub here).
    "qwen2.5-0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
}
# Dense bf16 tensor-core peaks, TFLOP/s, from NVIDIA's spec sheets (H100 SXM and H200: 989; a matmul benchmark
# measures about 790 on an H100). A CPU has no default: pass --peak_tflops (2 cores x 32 fp32 FLOP per cycle with
# AVX2's two FMA units x the clock in GHz / 1000, e.g. 0.16 at 2.5 GHz), else MFU is n/a.
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}
TRL_VENV_PYTHON = Path(__file__).resolve().parents[1] / ".venv-trl112" / "bin" / "python"
TRL_SCRIPT = Path(__file__).resolve().parent / "trl112_ppo.py"
TRAIN_PPO = Path(__file__).resolve().parents[1] / "train_ppo.py"  # run as a user runs it, never imported (issue 26)
PHASES = ("generation", "scoring", "optimization")
# The tiny preset's PPO settings (train_ppo.py's TINY_PRESET: 16 answers per update in 2 minibatches of 8, 4 PPO
# epochs, 48-token answers), the setting the issue compared against TRL 1.12.
TINY_PRESET = dict(
    shape="tiny",
    num_updates=4,
    per_device_train_batch_size=8,
    gradient_accumulation_steps=1,
    num_mini_batches=2,
    num_ppo_epochs=4,
    local_rollout_forward_batch_size=16,
    response_length=48,
)


@dataclass
class BenchmarkArguments:
    tiny: bool = field(default=False, metadata={"help": "The tiny shape and train_ppo.py --tiny's batch settings."})
    shape: Literal["tiny", "qwen2.5-0.5b"] = field(
        default="qwen2.5-0.5b", metadata={"help": "Model shape (random weights): the tiny preset's or Qwen2.5-0.5B's."}
    )
    num_updates: int = field(
        default=2, metadata={"help": "PPO updates to time (each a full rollout and update).", "range": "[1, inf)"}
    )
    per_device_train_batch_size: int = field(
        default=2, metadata={"help": "Answers per forward-backward pass.", "range": "[1, inf)"}
    )
    gradient_accumulation_steps: int = field(
        default=2, metadata={"help": "Passes per optimizer step.", "range": "[1, inf)"}
    )
    num_mini_batches: int = field(
        default=1, metadata={"help": "Optimizer steps per pass over a batch.", "range": "[1, inf)"}
    )
    num_ppo_epochs: int = field(
        default=2, metadata={"help": "Passes over each batch of answers.", "range": "[1, inf)"}
    )
    local_rollout_forward_batch_size: int = field(
        default=4, metadata={"help": "Answers per generate / scoring forward pass.", "range": "[1, inf)"}
    )
    response_length: int = field(
        default=16, metadata={"help": "Every answer's length, in tokens (no early stop).", "range": "[1, inf)"}
    )
    bf16: bool = field(default=runtime.bf16_available(), metadata={"help": "bf16 autocast (GPU); fp32 otherwise."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "train_ppo.py --gradient_checkpointing (with --trl no: TRL's side has none)."}
    )
    peak_tflops: float | None = field(
        default=None,
        metadata={
            "help": "Peak FLOP/s for the MFU column, in TFLOP/s; unset: 989 on an H100/H200 (bf16 dense), "
            "n/a elsewhere.",
            "range": "(0, inf)",
        },
    )
    trl: Literal["auto", "yes", "no"] = field(
        default="auto",
        metadata={
            "help": "Run TRL 1.12's PPOTrainer too: auto when .venv-trl112 exists (setup_trl112.sh), yes "
            "fails without it."
        },
    )
    trl_python: str = field(default=str(TRL_VENV_PYTHON), metadata={"help": "The Python with TRL 1.12."})
    work_dir: str = field(
        default=str(paths.CHECKPOINT_ROOT / "bench"), metadata={"help": "Where the random models are built, once."}
    )
    output: str | None = field(default=None, metadata={"help": "Write the results as JSON here too."})
    seed: int = field(
        default=42, metadata={"help": "Seed for the weights, the split and sampling.", "range": f"[0, {cli.MAX_SEED}]"}
    )


def build_models(shape: str, folder: Path, seed: int) -> None:
    """The tokenizer, a random causal LM (policy, reference, critic's start) whose stop token is never sampled
    (never_stopping) and a random reward model of `shape`; built again where the folder's tokenizer is not the tiny
    preset's of today (an update changed it), since the prompts' length, and so every figure, depends on it."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

    data = common.load_preference_data(paths.SAMPLE_DATA)
    tokenizer = tiny.build_tiny_tokenizer(
        [paths.DEFAULT_SYSTEM_PROMPT] + [row[c] for row in data for c in data_files.REQUIRED_COLUMNS]
    )
    pad_id, eos_id = tokenizer.convert_tokens_to_ids([tiny.PAD_TOKEN, tiny.EOS_TOKEN])
    # Both models or neither: they are built in a staging folder renamed into place whole.
    if all((folder / model / "config.json").is_file() for model in ("sft", "rm")):
        if AutoTokenizer.from_pretrained(folder / "sft").get_vocab() == tokenizer.get_vocab():
            never_stopping(pad_id, eos_id).save_pretrained(folder / "sft")  # models built before it get it too
            return
        print(f"{folder} holds models built with an earlier tokenizer: building them again.")
    elif folder.exists() and any(folder.iterdir()):
        names = ", ".join(sorted(entry.name for entry in folder.iterdir())[:5])
        raise errors.ArgumentError(
            f"--work_dir: {folder} holds files that are not this benchmark's models ({names}), and building them "
            f"replaces the whole folder. Pass another --work_dir, a folder for the benchmark alone."
        )
    else:
        print(f"Building random {shape} models in {folder} (once).")
    config = Qwen2Config(
        **{"vocab_size": len(tokenizer)} | SHAPES[shape], bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id
    )
    torch.manual_seed(seed)
    partial = checkpoints.sibling(folder, ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    policy = Qwen2ForCausalLM(config)
    policy.generation_config = never_stopping(pad_id, eos_id)
    policy.save_pretrained(partial / "sft")
    del policy
    Qwen2ForSequenceClassification(Qwen2Config(**config.to_dict() | {"num_labels": 1})).save_pretrained(partial / "rm")
    for model in ("sft", "rm"):
        tokenizer.save_pretrained(partial / model)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def never_stopping(pad_id: int, eos_id: int):
    """The random policy's generation_config.json: its stop token suppressed (suppress_tokens: its logit is -inf at
    every step), so every answer runs to --response_length and the FLOP count is exact. generate() takes each field
    its caller left unset from the model's file, and neither train_ppo.py's sampling_config nor TRL 1.12's
    PPOTrainer sets suppress_tokens, so both sides inherit it, with the same per-step cost as min_new_tokens'
    suppression. A property of the benchmark's model, not a flag of train_ppo.py: sampling the policy with its stop
    token suppressed is not sampling the policy that PPO computes log-probs for, a bias no real run should have.
    main checks the answers' lengths, so a train_ppo.py that stopped inheriting it fails the benchmark, not its
    figures."""
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id, suppress_tokens=[eos_id])


def fixed_length_prompts(tokenizer, folder: Path) -> tuple[Path, list[list[int]]]:
    """The bundled questions whose prompt (system prompt + question, chat template) has the most common length,
    written as a dataset: every episode then costs the same."""
    data = common.load_preference_data(paths.SAMPLE_DATA)
    prompts = [common.prompt_ids(tokenizer, row, paths.DEFAULT_SYSTEM_PROMPT) for row in data]
    length = Counter(map(len, prompts)).most_common(1)[0][0]
    kept = [i for i, prompt in enumerate(prompts) if len(prompt) == length]
    path = folder / "prompts.jsonl"
    data.select(kept).to_json(path, force_ascii=False)
    return path, [prompts[i] for i in kept]


def model_params(shape: str, vocab_size: int) -> tuple[int, int]:
    """(parameters of the transformer body, of the LM head): built on the meta device, no memory."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**{"vocab_size": vocab_size} | SHAPES[shape]))
    embedding = model.get_input_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - embedding  # tied: the LM head is the embedding
    return body, embedding


def phase_flops(body: int, head: int, episodes: int, prompt: int, answer: int, ppo_epochs: int) -> dict[str, float]:
    """Model FLOPs per phase: 2 x parameters x tokens for a forward pass, 6x for a training pass (Kaplan et al. 2020;
    PaLM's MFU, Chowdhery et al. 2022, appendix B), attention's own FLOPs left out. The LM head counts only where
    logits are computed: the generated tokens, and the answer's in scoring and training (logits_to_keep)."""
    tokens = episodes * (prompt + answer)
    head_tokens = episodes * (answer + 1)
    return {
        # the policy, merged: the prompt once, then one token per step
        "generation": 2 * (body * tokens + head * episodes * answer),
        # the policy, the reference, the critic and the reward model, each one pass over prompt + answer
        "scoring": 2 * (4 * body * tokens + 2 * head * head_tokens),
        # policy and critic, forward and backward, every PPO epoch (6x although LoRA skips the frozen weights' grads)
        "optimization": ppo_epochs * 6 * (2 * body * tokens + head * head_tokens),
    }


def default_peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for gpu, peak in GPU_PEAK_TFLOPS.items() if gpu in name), None)


def run_ours(args: BenchmarkArguments, models: Path, dataset: Path, episodes: int) -> dict:
    """train_ppo.py for args.num_updates updates, in a process of its own with its flags, as a user runs it (never
    imported: issue 26), in `models` (its TensorBoard run goes to <models>/tensorboard). Its figures are read back
    from what it writes. Timed, as its train_results.json's train_runtime, from the first update's start to the last
    one's end: loading the models before it and the final save and chart after it are left out. Per update, from its
    TensorBoard scalars: each phase's seconds (time/generation, time/scoring, time/optimization), the CPU seconds of
    every thread (time/cpu), the mean answer length, the episodes so far and the peak memory, overall
    (memory/peak_gib) and each phase's (memory/<phase>_gib)."""
    output_dir = models / "ppo_output"
    shutil.rmtree(output_dir, ignore_errors=True)
    runs = models / paths.TENSORBOARD_ROOT / "ppo"
    earlier = set(runs.iterdir()) if runs.is_dir() else set()
    flags = dict(
        dataset_name=dataset,
        model_source="tiny",
        sft_model_path=models / "sft",
        reward_model_path=models / "rm",
        value_model_path=models / "sft",
        output_dir=output_dir,
        total_episodes=episodes,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_mini_batches=args.num_mini_batches,
        num_ppo_epochs=args.num_ppo_epochs,
        local_rollout_forward_batch_size=args.local_rollout_forward_batch_size,
        response_length=args.response_length,
        # The room a prompt has beside its answer in the shape's positions (train_ppo.py refuses more); every prompt
        # here is shorter.
        max_prompt_length=SHAPES[args.shape]["max_position_embeddings"] - args.response_length,
        bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
        save_steps=0,
        num_eval_questions=0,  # evaluation on held-out questions is not training throughput (TRL 1.12 has none)
    )
    command = [
        sys.executable,
        str(TRAIN_PPO),
        *(str(x) for name, value in flags.items() for x in (f"--{name}", value)),
    ]
    print(f"train_ppo.py: {shlex.join(command)}", flush=True)
    if (code := subprocess.run(command, cwd=models).returncode) != 0:
        raise errors.PipelineError(f"train_ppo.py exited with status {code}; its error is above.")
    (run_dir,) = set(runs.iterdir()) - earlier  # the run's own: one folder per run (charts.tensorboard_run)
    scalars = charts.read_scalars(run_dir)
    train_results = json.loads((output_dir / paths.TRAIN_RESULTS_FILE).read_text())
    return {
        "episodes": int(scalars["episode"][-1][1]),
        "seconds": train_results["train_runtime"],
        "cpu_seconds": sum(value for _, value in scalars["time/cpu"]),
        "phase_seconds": {phase: sum(value for _, value in scalars[f"time/{phase}"]) for phase in PHASES},
        "answer_length": sum(value for _, value in scalars["val/answer_length"]) / len(scalars["val/answer_length"]),
        # the GPU's peak allocated memory, or on a CPU the process's peak resident set: overall and per phase
        "peak_memory_gib": max(value for _, value in scalars["memory/peak_gib"]),
        "phase_peak_gib": {phase: max(value for _, value in scalars[f"memory/{phase}_gib"]) for phase in PHASES},
    }


def run_trl(args: BenchmarkArguments, models: Path, prompts: list[list[int]], episodes: int) -> dict:
    """benchmarks/trl112_ppo.py in the TRL 1.12 venv, on the same models, prompts and settings."""
    spec = models / "trl_run.json"
    result = models / "trl_result.json"
    spec.write_text(json.dumps(asdict(args) | {"episodes": episodes, "models": str(models), "prompts": prompts}))
    result.unlink(missing_ok=True)
    print(f"TRL 1.12's PPOTrainer ({args.trl_python}):", flush=True)
    if subprocess.run([args.trl_python, str(TRL_SCRIPT), str(spec), str(result)]).returncode != 0:
        raise errors.PipelineError(f"the TRL 1.12 side ({TRL_SCRIPT}) failed; its error is above.")
    return json.loads(result.read_text())


def summarise(run: dict, flops: dict[str, float], peak_tflops: float | None, answer: int) -> dict:
    """Episodes/s overall and per phase, generated tokens/s, MFU per phase and overall."""
    episodes, phases = run["episodes"], run.get("phase_seconds") or {}

    def mfu(flop: float, seconds: float) -> float | None:
        return flop / seconds / (peak_tflops * 1e12) if peak_tflops else None

    return {
        "episodes": episodes,
        "seconds": run["seconds"],
        "episodes_per_s": episodes / run["seconds"],
        "phase_episodes_per_s": {phase: episodes / seconds for phase, seconds in phases.items()},
        # CPU time of every thread of the process: on a machine shared with other jobs, steadier than wall time
        "cpu_seconds_per_episode": run["cpu_seconds"] / episodes,
        "tokens_per_s": episodes * answer / run["seconds"],
        "generation_tokens_per_s": episodes * answer / phases["generation"] if "generation" in phases else None,
        "peak_memory_gib": run["peak_memory_gib"],
        "phase_peak_gib": run.get("phase_peak_gib") or {},
        "mfu": mfu(sum(flops.values()), run["seconds"]),
        "phase_mfu": {phase: mfu(flops[phase], seconds) for phase, seconds in phases.items()},
    }


def table(results: dict) -> str:
    def cell(value, spec):
        return "n/a" if value is None else format(value, spec)

    rows = [("", *results)]
    rows.append(("episodes/s", *(cell(r["episodes_per_s"], ".2f") for r in results.values())))
    for phase in PHASES:
        rows.append((f"  {phase}", *(cell(r["phase_episodes_per_s"].get(phase), ".2f") for r in results.values())))
    rows.append(("CPU s / episode", *(cell(r["cpu_seconds_per_episode"], ".2f") for r in results.values())))
    rows.append(("generated tokens/s", *(cell(r["tokens_per_s"], ".1f") for r in results.values())))
    rows.append(("  in generation", *(cell(r["generation_tokens_per_s"], ".1f") for r in results.values())))
    rows.append(("peak memory GiB", *(cell(r["peak_memory_gib"], ".2f") for r in results.values())))
    for phase in PHASES:
        rows.append((f"  {phase}", *(cell(r["phase_peak_gib"].get(phase), ".2f") for r in results.values())))
    rows.append(("MFU", *(cell(r["mfu"], ".2%") for r in results.values())))
    for phase in PHASES:
        rows.append((f"  {phase}", *(cell(r["phase_mfu"].get(phase), ".2%") for r in results.values())))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    )


def describe_peak(peak: float | None) -> str:
    return f"{peak:g} TFLOP/s" if peak else "n/a (MFU n/a: pass --peak_tflops)"


def main(args: BenchmarkArguments) -> dict:
    from transformers import AutoTokenizer

    if args.num_updates < 1:
        raise errors.ArgumentError(f"--num_updates must be at least 1, not {args.num_updates}. {cli.HELP_HINT}")
    trl_python = Path(args.trl_python)
    if args.trl == "yes" and not trl_python.exists():
        raise errors.ArgumentError(
            f"--trl yes, but {trl_python} does not exist: run `bash benchmarks/setup_trl112.sh` first, or pass "
            "--trl_python with the Python of a venv holding TRL 1.12."
        )
    if args.gradient_checkpointing and (args.trl == "yes" or (args.trl == "auto" and trl_python.exists())):
        raise errors.ArgumentError(
            "--gradient_checkpointing is train_ppo.py's: TRL 1.12's side would run without it, so the two would not "
            "be compared at the same settings. Pass --trl no with it."
        )
    if args.output:  # written after the whole benchmark: checked before it
        outputs.check_output_file(args.output, "--output", {}, "the results")
    if importlib.util.find_spec("matplotlib") is None:  # checked before the run, not after it
        raise errors.PipelineError(
            "train_ppo.py draws its chart (matplotlib) after its final save, and this Python has no matplotlib: "
            "install it (requirements.txt), or carry its wheel where a GPU machine lacks it (benchmarks/gpu.sh)."
        )
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.num_mini_batches
    episodes = args.num_updates * batch
    models = (Path(args.work_dir) / args.shape).resolve()
    build_models(args.shape, models, args.seed)
    tokenizer = AutoTokenizer.from_pretrained(models / "sft")
    dataset, prompts = fixed_length_prompts(tokenizer, models)
    prompt_length = len(prompts[0])
    body, head = model_params(args.shape, (SHAPES[args.shape] | {"vocab_size": len(tokenizer)})["vocab_size"])
    flops = phase_flops(body, head, episodes, prompt_length, args.response_length, args.num_ppo_epochs)
    peak = args.peak_tflops or default_peak_tflops()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"

    ours = run_ours(args, models, dataset, episodes)
    if ours["answer_length"] != args.response_length:  # a mean of lengths up to response_length: all full
        raise errors.PipelineError(
            f"answers averaged {ours['answer_length']:.2f} tokens, not {args.response_length}: the stop token was not "
            f"suppressed (suppress_tokens in {models / 'sft' / 'generation_config.json'}, which train_ppo.py's "
            "generate() no longer inherits?), so the FLOP count and the comparison would be off."
        )
    results = {"hf-ppo": summarise(ours, flops, peak, args.response_length)}
    if args.trl == "yes" or (args.trl == "auto" and trl_python.exists()):
        results["TRL 1.12"] = summarise(run_trl(args, models, prompts, episodes), flops, peak, args.response_length)
    report = {
        "settings": asdict(args) | {"batch_per_update": batch, "episodes": episodes, "prompt_length": prompt_length},
        "device": device,
        "dtype": "bf16 autocast" if args.bf16 else "fp32",
        "parameters": {"body": body, "lm_head": head},
        "flops_per_run": flops,
        "peak_tflops": peak,
        "results": results,
    }
    print(
        f"\nPPO throughput, {args.shape} shape (random weights), {device}, {report['dtype']}: {args.num_updates} "
        f"updates of {batch} answers, prompts {prompt_length} + answers {args.response_length} tokens, "
        f"{args.num_ppo_epochs} PPO epochs, peak {describe_peak(peak)}"
    )
    print(table(results))
    if "TRL 1.12" in results:
        ratio = results["hf-ppo"]["episodes_per_s"] / results["TRL 1.12"]["episodes_per_s"]
        report["ratio_vs_trl112"] = ratio
        print(f"hf-ppo / TRL 1.12 episodes/s: {ratio:.2f}x")
        # Amdahl's bound: were generation and scoring free, our update phase alone would still take its time.
        ceiling = results["hf-ppo"]["phase_episodes_per_s"]["optimization"] / results["TRL 1.12"]["episodes_per_s"]
        report["ceiling_vs_trl112"] = ceiling
        print(f"  the most it could be with generation and scoring free (our update phase alone): {ceiling:.2f}x")
    if args.output:
        outputs.write_text_atomic(args.output, json.dumps(report, indent=2))
        print(f"Results written to {args.output}")
    return report


def make_parser() -> cli.Parser:
    return cli.Parser((BenchmarkArguments,))


if __name__ == "__main__":
    runtime.setup()
    with lifecycle.user_errors():
        main(*cli.parse_args(make_parser(), TINY_PRESET))
