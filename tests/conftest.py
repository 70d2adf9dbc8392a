import subprocess
import sys
from pathlib import Path

import pytest
import torch

import common

SCRIPT_TIMEOUT_S = 300


def run_script(
    script: str, *args, cwd: Path, stdin: str = "", launcher: tuple = (sys.executable,), env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a pipeline script as a user would, in `cwd` (created if missing), with stdin a pipe (never a terminal);
    `launcher` is the command before the script (python, or accelerate launch and its flags)."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [*map(str, launcher), str(common.ROOT / script), *map(str, args)],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        env=env,
    )


def answer_log_likelihood(model, tokenizer, rows, column: str) -> float:
    """Mean per-token log-likelihood of the `column` answers given their prompts (the tokens SFT trains on)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            prompt = common.prompt_ids(tokenizer, row, common.DEFAULT_SYSTEM_PROMPT)
            messages = common.prompt_messages(row, common.DEFAULT_SYSTEM_PROMPT)
            full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": row[column]}])
            ids = torch.tensor([full["input_ids"]])
            log_probs = model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
            total += log_probs[len(prompt) - 1 :].sum().item()
            count += ids.shape[1] - len(prompt)
    return total / count


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The tiny base model, built once per test session (about a minute on two cores)."""
    path = tmp_path_factory.mktemp("base") / "tiny"
    common.build_tiny_base(path)
    return path


@pytest.fixture(scope="session")
def sft_run(tiny_base, tmp_path_factory) -> Path:
    """The working folder of one train_sft.py --tiny run (checkpoint/ and tensorboard/ land in it; its stdout in
    train.out)."""
    workdir = tmp_path_factory.mktemp("sft_run")
    result = run_script("train_sft.py", "--tiny", "--model_name_or_path", tiny_base, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    (workdir / "train.out").write_text(result.stdout)
    return workdir


@pytest.fixture(scope="session")
def rm_run(tiny_base, tmp_path_factory) -> Path:
    """The working folder of one train_rm.py --tiny run (its stdout in train.out) followed by eval_rm.py."""
    workdir = tmp_path_factory.mktemp("rm_run")
    result = run_script("train_rm.py", "--tiny", "--model_name_or_path", tiny_base, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    (workdir / "train.out").write_text(result.stdout)
    result = run_script("eval_rm.py", "--tiny", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    (workdir / "eval_rm.out").write_text(result.stdout)
    return workdir


@pytest.fixture(scope="session")
def ppo_run(sft_run, rm_run, tiny_base, tmp_path_factory) -> Path:
    """The working folder of one train_ppo.py --tiny run on the session's SFT and reward models (its stdout and
    stderr in train.out, train.err), then eval_ppo.py --compare (its table in compare.out, stderr in compare.err)."""
    workdir = tmp_path_factory.mktemp("ppo_run")
    models = ("--sft_model_path", sft_run / common.SFT_DIR, "--reward_model_path", rm_run / common.RM_DIR)
    result = run_script("train_ppo.py", "--tiny", *models, "--value_model_path", tiny_base, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    (workdir / "train.out").write_text(result.stdout)
    (workdir / "train.err").write_text(result.stderr)
    result = run_script("eval_ppo.py", "--tiny", "--compare", *models, "--base_model_path", tiny_base, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    (workdir / "compare.out").write_text(result.stdout)
    (workdir / "compare.err").write_text(result.stderr)
    return workdir
