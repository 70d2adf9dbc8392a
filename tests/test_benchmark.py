"""benchmarks/ppo_throughput.py: the FLOP count against hand arithmetic, models built again for a new tokenizer, a
policy that never stops, train_ppo.py run and never imported, the tiny preset end to end (table and JSON, its figures
those the run wrote), and the TRL 1.12 side with the ratio's ceiling where its venv exists."""

import ast
import json

import pytest
import torch

from benchmarks import ppo_throughput
from conftest import run_main
from hfppo import charts, paths, sampling, tiny

QWEN25_05B_PARAMETERS = 494_032_768  # Qwen2.5-0.5B's model card: 0.49B, of which 0.36B non-embedding


def test_qwen_shape_has_qwen25_05b_parameters():
    body, head = ppo_throughput.model_params("qwen2.5-0.5b", 151936)
    assert head == 151936 * 896
    assert body + head == QWEN25_05B_PARAMETERS


def test_phase_flops_by_hand():
    # 1 episode, prompt 3 + answer 2 tokens, body 10 and head 100 parameters, 1 PPO epoch
    flops = ppo_throughput.phase_flops(10, 100, 1, 3, 2, 1)
    assert flops == {
        "generation": 2 * (10 * 5 + 100 * 2),
        "scoring": 2 * (4 * 10 * 5 + 2 * 100 * 3),
        "optimization": 6 * (2 * 10 * 5 + 100 * 3),
    }


def test_models_of_an_earlier_tokenizer_are_built_again(tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "tiny"
    ppo_throughput.build_models("tiny", folder, seed=0)
    weights = folder / "rm" / "model.safetensors"
    built = weights.stat().st_mtime_ns
    today = AutoTokenizer.from_pretrained(folder / "sft").get_vocab()
    ppo_throughput.build_models("tiny", folder, seed=0)
    assert weights.stat().st_mtime_ns == built  # the same tokenizer: reused
    tiny.build_tiny_tokenizer(["an earlier tokenizer, trained on other text"]).save_pretrained(folder / "sft")
    ppo_throughput.build_models("tiny", folder, seed=0)
    assert AutoTokenizer.from_pretrained(folder / "sft").get_vocab() == today
    assert weights.stat().st_mtime_ns != built


def test_the_benchmark_policy_never_stops_under_train_ppo_sampling(tmp_path):
    """Every answer is --response_length tokens, through the sampling train_ppo.py does (sampling.generate), even
    with the stop token made the likeliest; without the policy's suppress_tokens the same policy stops at once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "tiny"
    ppo_throughput.build_models("tiny", folder, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(folder / "sft")
    policy = AutoModelForCausalLM.from_pretrained(folder / "sft")
    _, prompts = ppo_throughput.fixed_length_prompts(tokenizer, folder)
    eos = tokenizer.eos_token_id

    def likeliest_stop(module, inputs, logits):
        logits[..., eos] += 100.0
        return logits

    policy.lm_head.register_forward_hook(likeliest_stop)

    def lengths():
        torch.manual_seed(0)
        return sampling.generate(policy, tokenizer, prompts[:4], 8, 0.7, 4, "cpu")["lengths"].tolist()

    assert policy.generation_config.suppress_tokens == [eos]
    assert lengths() == [8] * 4
    policy.generation_config.suppress_tokens = None
    assert lengths() == [1] * 4  # the control: the hook alone makes it stop at its first token


def test_the_benchmark_imports_no_top_level_script():
    """Issue 26: no file but a test imports a top-level script; the benchmark runs train_ppo.py as a user does."""
    for path in (paths.ROOT / "benchmarks").glob("*.py"):
        nodes = list(ast.walk(ast.parse(path.read_text(encoding="utf-8"))))
        imported = [alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names]
        imported += [node.module for node in nodes if isinstance(node, ast.ImportFrom) and node.module]
        scripts = [name for name in imported if name.split(".")[0].startswith(("train_", "eval_"))]
        assert not scripts, f"{path.name} imports {scripts}"


def test_gradient_checkpointing_is_refused_where_trl_s_side_would_run_without_it(tmp_path):
    flags = ["--tiny", "--gradient_checkpointing", "true", "--trl", "yes", "--trl_python", __file__]
    result = run_main("benchmarks/ppo_throughput.py", *flags, "--work_dir", tmp_path, cwd=tmp_path)
    assert result.returncode == 2 and "Pass --trl no with it." in result.stderr
    assert not list(tmp_path.iterdir())  # refused before any model was built


def run_tiny(tmp_path, *args):
    output = tmp_path / "result.json"
    flags = ["--tiny", "--num_updates", 1, "--work_dir", tmp_path / "models", "--output", output, *args]
    result = run_main("benchmarks/ppo_throughput.py", *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads(output.read_text())


@pytest.mark.slow  # builds and trains models through run_tiny, which conftest cannot see from this body
def test_tiny_benchmark_prints_table_and_json(tmp_path):
    stdout, report = run_tiny(tmp_path, "--trl", "no")
    assert "episodes/s" in stdout and "generated tokens/s" in stdout and "peak memory GiB" in stdout
    ours = report["results"]["hf-ppo"]
    assert ours["episodes"] == report["settings"]["episodes"] == 16
    assert ours["episodes_per_s"] > 0 and ours["peak_memory_gib"] > 0 and ours["cpu_seconds_per_episode"] > 0
    assert set(ours["phase_episodes_per_s"]) == {"generation", "scoring", "optimization"}
    assert all(rate > 0 for rate in ours["phase_episodes_per_s"].values())
    # each phase takes part of the loop's time, so it runs more episodes per second than the whole loop
    assert all(rate > ours["episodes_per_s"] for rate in ours["phase_episodes_per_s"].values())
    assert "TRL 1.12" not in report["results"]
    # the figures are those the train_ppo.py run wrote, and no answer stopped before its 48 tokens
    models = tmp_path / "models" / "tiny"
    (run_dir,) = (models / paths.TENSORBOARD_ROOT / "ppo").iterdir()
    scalars = charts.read_scalars(run_dir)
    train_results = json.loads((models / "ppo_output" / paths.TRAIN_RESULTS_FILE).read_text())
    assert ours["seconds"] == train_results["train_runtime"]
    assert ours["cpu_seconds_per_episode"] == pytest.approx(sum(value for _, value in scalars["time/cpu"]) / 16)
    assert ours["peak_memory_gib"] == max(value for _, value in scalars["memory/peak_gib"])
    # the peak is that of the highest phase, each phase's measured from its own start
    assert ours["peak_memory_gib"] == max(ours["phase_peak_gib"].values()) > 0
    assert [value for _, value in scalars["val/num_eos_tokens"]] == [0.0]
    assert [value for _, value in scalars["val/answer_length"]] == [48.0]


@pytest.mark.slow
@pytest.mark.skipif(
    not ppo_throughput.TRL_VENV_PYTHON.exists(),
    reason="TRL 1.12 lives in .venv-trl112, which `bash benchmarks/setup_trl112.sh` builds from the package index: "
    "never a project requirement, so the comparison runs only where it was built",
)
def test_tiny_benchmark_against_trl112(tmp_path):
    stdout, report = run_tiny(tmp_path, "--trl", "yes")
    trl = report["results"]["TRL 1.12"]
    assert trl["episodes"] == 16 and trl["episodes_per_s"] > 0
    assert all(rate > 0 for rate in trl["phase_episodes_per_s"].values())
    ratio = report["results"]["hf-ppo"]["episodes_per_s"] / trl["episodes_per_s"]
    assert report["ratio_vs_trl112"] == pytest.approx(ratio)
    assert f"hf-ppo / TRL 1.12 episodes/s: {ratio:.2f}x" in stdout
    ceiling = report["results"]["hf-ppo"]["phase_episodes_per_s"]["optimization"] / trl["episodes_per_s"]
    assert report["ceiling_vs_trl112"] == pytest.approx(ceiling)
    assert ceiling > ratio  # our update phase is part of our whole time
    assert f"(our update phase alone): {ceiling:.2f}x" in stdout
