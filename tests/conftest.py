import contextlib
import importlib
import io
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock

import common
import train_ppo
from hfppo import cli, lifecycle, paths, runtime, tiny

# What every script does first (hfppo/runtime.py): run_main calls a script's main in this process.
runtime.setup()

# `make test` runs the suite in one pytest-xdist worker per core: the tiny models' passes are too small to use a second
# core, so two tests at a time finish sooner than one test on two cores. Each worker then gets its share of the
# cores (an OpenMP thread pool per process on 2 cores would thrash: README, Tests), and so does every script it starts.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // WORKERS))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
BUILT = ".built"  # in a session fixture's folder once it is complete

# A script of the tiny preset takes 10 to 30 s on a quiet 2-core machine and several times that on a busy one (the
# session fixtures once took over 300 s under load); CI gives the whole suite 90 minutes, so 30 for one script means
# stuck, not slow.
SCRIPT_TIMEOUT_S = 1800
# What makes a test slow, marked `slow` by pytest_collection_modifyitems so that `pytest -m "not slow"` is the fast
# tier and a new test is sorted by what it uses, with no decorator to forget: a fixture that builds or trains a model,
# or a call of its own to a script in a new process (importing torch, transformers and TRL takes 5 to 30 s).
SLOW_FIXTURES = {"tiny_base", "sft_run", "rm_run", "ppo_run", "dpo_run", "grpo_run", "compare_run"}
# What the libraries print that the scripts filter or explain (README, "Messages you will not see"): never in a run's
# stderr (tests/test_ppo_run.py, tests/test_compare.py).
LIBRARY_NOISE = ("is_gradient_checkpointing", "LOAD REPORT", "\x1b[", "pin_memory", "not sharded")
# PPO from the base in compare_run: 4 updates of the tiny preset's 16 answers, enough for a row of the comparison
# (the claim it tests is the README's, from a full run)
COMPARE_PPO_BASE_EPISODES = 64
SLOW_CALLS = {"run_script", "run_ok", "subprocess"}
# A test left in the fast tier that takes longer than this is named at the end of the run, to be marked
# @pytest.mark.slow (the fast tier's tests take well under a second each; a slow one may start a script indirectly).
FAST_TEST_LIMIT_S = 10
# The opt-in tier on real weights (tests/real/, make test-real MODEL=DIR): collected only when this variable names the
# model's folder, so that `pytest` over tests/ (make test, CI) never loads gigabytes of weights for minutes.
REAL_MODEL_VARIABLE = "HFPPO_REAL_MODEL"
collect_ignore = [] if os.environ.get(REAL_MODEL_VARIABLE) else ["real"]
# float32's machine epsilon, 2**-23: the gap between 1 and the next float32. Rounding one result moves it by at most
# half that (the unit roundoff u) of its magnitude. The rule for comparing values computed in other shapes, orders or
# CPUs (tests/README.md) derives every such tolerance from it.
FLOAT32_EPS = torch.finfo(torch.float32).eps


def pytest_collection_modifyitems(items):
    for item in items:
        code = getattr(getattr(item, "function", None), "__code__", None)
        names = code.co_names if code else ()  # the global names and attributes the test's own body uses
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())) or SLOW_CALLS.intersection(names):
            item.add_marker(pytest.mark.slow)


_slow_unmarked = []


def pytest_runtest_logreport(report):
    if report.when == "call" and "slow" not in report.keywords and report.duration > FAST_TEST_LIMIT_S:
        _slow_unmarked.append(f"{report.nodeid} took {report.duration:.0f} s")


def pytest_terminal_summary(terminalreporter):
    if _slow_unmarked:
        terminalreporter.section(f"not marked slow, but took over {FAST_TEST_LIMIT_S} s")
        for line in _slow_unmarked:
            terminalreporter.write_line(line)


def run_script(
    script: str, *args, cwd: Path, stdin: str = "", launcher: tuple = (sys.executable,), env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a pipeline script as a user would, in `cwd` (created if missing), with stdin a pipe (never a terminal);
    `launcher` is the command before the script (python, or accelerate launch and its flags). A script still running
    after SCRIPT_TIMEOUT_S is killed with every process it started, and the test fails naming it."""
    cwd.mkdir(parents=True, exist_ok=True)
    command = [*map(str, launcher), str(paths.ROOT / script), *map(str, args)]
    # Its own process group, so that a timeout or Ctrl-C also ends the workers accelerate launch starts.
    process = subprocess.Popen(
        command, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(stdin, timeout=SCRIPT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(
            f"{describe(command, cwd)} did not finish within {SCRIPT_TIMEOUT_S} s (SCRIPT_TIMEOUT_S in "
            f"tests/conftest.py) and was killed. The end of its output:\n{stderr[-3000:]}",
            pytrace=False,
        )
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def describe(command: list, cwd: Path) -> str:
    """The command as one could paste it, the script's path relative to the repository."""
    return f"`{shlex.join(command).replace(str(paths.ROOT) + '/', '')}` (in {cwd})"


def free_port() -> int:
    """A port nothing listens on now, for a server or for launched processes to meet on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_ok(script: str, *args, **kwargs) -> subprocess.CompletedProcess:
    """run_script, failing the test with the command and the end of its errors unless it exits with 0."""
    result = run_script(script, *args, **kwargs)
    if result.returncode != 0:
        pytest.fail(
            f"{describe(result.args, kwargs['cwd'])} exited with status {result.returncode}:\n{result.stderr[-3000:]}",
            pytrace=False,
        )
    return result


def run_main(script: str, *args, cwd: Path, stdin: str | bytes = "") -> subprocess.CompletedProcess:
    """Run a pipeline script's `__main__` block in this process: the same parsing, `main` and error handling, without
    the 5 to 30 s a new process spends importing torch, transformers and TRL. For what a script prints and the status
    it exits with, not for library noise (transformers' and TRL's loggers keep the stderr they started with); one
    test per script still runs it as a user would (run_script)."""
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))  # benchmarks/x.py: benchmarks.x
    cwd.mkdir(parents=True, exist_ok=True)
    stdout, stderr, old_cwd, old_stdin = io.StringIO(), io.StringIO(), Path.cwd(), sys.stdin
    returncode = 0
    try:
        os.chdir(cwd)
        # Bytes underneath, as a real stdin has (the chat scripts read sys.stdin.buffer); bytes given are sent as is.
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin if isinstance(stdin, bytes) else stdin.encode()), "utf-8")
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), lifecycle.user_errors():
            module.main(*cli.parse_args(module.make_parser(), module.TINY_PRESET, list(map(str, args))))
    except SystemExit as exit:
        returncode = exit.code
    finally:
        os.chdir(old_cwd)
        sys.stdin = old_stdin
    return subprocess.CompletedProcess([script, *map(str, args)], returncode, stdout.getvalue(), stderr.getvalue())


def ppo_args(*args):
    """train_ppo.py's parsed (script arguments, PPOConfig) for `args` under the tiny preset (test_ppo_algorithm.py,
    test_ppo_run.py, test_trackers.py)."""
    return cli.parse_args(train_ppo.make_parser(), train_ppo.TINY_PRESET, ["--tiny", *map(str, args)])


def answer_log_likelihood(model, tokenizer, rows, column: str) -> float:
    """Mean per-token log-likelihood of the `column` answers given their prompts (the tokens SFT trains on)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            prompt = common.prompt_ids(tokenizer, row, paths.DEFAULT_SYSTEM_PROMPT)
            messages = common.prompt_messages(row, paths.DEFAULT_SYSTEM_PROMPT)
            full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": row[column]}])
            ids = torch.tensor([full["input_ids"]])
            log_probs = model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
            total += log_probs[len(prompt) - 1 :].sum().item()
            count += ids.shape[1] - len(prompt)
    return total / count


def float32_sum_tolerance(terms) -> float:
    """How far two float32 sums of the same `terms` may lie apart when they add in other orders (another batch
    shape's padding, another CPU's vector width): each is within (n - 1) u sum|terms| of the exact sum (Higham,
    Accuracy and Stability of Numerical Algorithms, 4.2; u = FLOAT32_EPS / 2), so the two within
    (n - 1) FLOAT32_EPS sum|terms|; n FLOAT32_EPS sum|terms| also covers rounding each term, and a mean's division
    (divide the result by n for a mean)."""
    terms = torch.as_tensor(terms, dtype=torch.float64).flatten()
    return len(terms) * FLOAT32_EPS * terms.abs().sum().item()


def log_prob_sum_tolerance(log_probs) -> float:
    """How far two float32 computations of one answer's summed log-probability (`log_probs`: its tokens' log-probs)
    may lie apart when they ran in other batch shapes: float32_sum_tolerance for the sum of its n tokens, and as much
    again for the terms themselves, each the float32 output of a forward pass whose matmuls and log-softmax add in
    other orders too (2 n FLOAT32_EPS sum|log-probs| in all). Measured on the tiny DPO run's 140 held-out answers
    (12 to 54 tokens, 4 to 9 nats each) on an AVX-512 Xeon, alone against in padded batches of 8: at most
    1.6 FLOAT32_EPS sum|log-probs|, a twentieth of this bound or less."""
    return 2 * float32_sum_tolerance(log_probs)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `name`, filled by `build(folder)` once for the whole test session. Under pytest-xdist every worker
    has a session of its own; the first to need the folder builds it under a lock, and the others wait and reuse it.
    A build that failed is tried again by the next worker that needs it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's own folder, above the workers' (basetemp/popen-gw0, ...)
    folder = root / name
    with FileLock(root / f"{name}.lock"):
        if not (folder / BUILT).exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / BUILT).touch()
    return folder


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The tiny base model, built once per test session (about a minute on two cores)."""

    def build(folder: Path) -> None:
        tiny.build_tiny_base(folder / "tiny", *common.tiny_base_data())

    return built_once(tmp_path_factory, "base", build) / "tiny"


@pytest.fixture(scope="session")
def sft_run(tiny_base, tmp_path_factory) -> Path:
    """The working folder of one train_sft.py --tiny run (checkpoint/ and tensorboard/ land in it; its stdout and
    stderr in train.out, train.err)."""

    def train(workdir: Path) -> None:
        result = run_ok("train_sft.py", "--tiny", "--model_name_or_path", tiny_base, cwd=workdir)
        (workdir / "train.out").write_text(result.stdout)
        (workdir / "train.err").write_text(result.stderr)

    return built_once(tmp_path_factory, "sft_run", train)


@pytest.fixture(scope="session")
def rm_run(tiny_base, tmp_path_factory) -> Path:
    """The working folder of one train_rm.py --tiny run (its stdout and stderr in train.out, train.err) followed by
    eval_rm.py."""

    def train(workdir: Path) -> None:
        result = run_ok("train_rm.py", "--tiny", "--model_name_or_path", tiny_base, cwd=workdir)
        (workdir / "train.out").write_text(result.stdout)
        (workdir / "train.err").write_text(result.stderr)
        result = run_ok("eval_rm.py", "--tiny", cwd=workdir)
        (workdir / "eval_rm.out").write_text(result.stdout)

    return built_once(tmp_path_factory, "rm_run", train)


@pytest.fixture(scope="session")
def ppo_run(sft_run, rm_run, tiny_base, tmp_path_factory) -> Path:
    """The working folder of one train_ppo.py --tiny run on the session's SFT and reward models (its stdout and
    stderr in train.out, train.err)."""
    models = ("--sft_model_path", sft_run / paths.SFT_DIR, "--reward_model_path", rm_run / paths.RM_DIR)

    def train(workdir: Path) -> None:
        result = run_ok("train_ppo.py", "--tiny", *models, "--value_model_path", tiny_base, cwd=workdir)
        (workdir / "train.out").write_text(result.stdout)
        (workdir / "train.err").write_text(result.stderr)

    return built_once(tmp_path_factory, "ppo_run", train)


@pytest.fixture(scope="session")
def dpo_run(sft_run, tmp_path_factory) -> Path:
    """The working folder of one train_dpo.py --tiny run on the session's SFT model (its stdout and stderr in
    train.out, train.err)."""

    def train(workdir: Path) -> None:
        result = run_ok("train_dpo.py", "--tiny", "--sft_model_path", sft_run / paths.SFT_DIR, cwd=workdir)
        (workdir / "train.out").write_text(result.stdout)
        (workdir / "train.err").write_text(result.stderr)

    return built_once(tmp_path_factory, "dpo_run", train)


@pytest.fixture(scope="session")
def grpo_run(sft_run, rm_run, tmp_path_factory) -> Path:
    """The working folder of one train_grpo.py --tiny run on the session's SFT and reward models (its stdout and
    stderr in train.out, train.err)."""
    models = ("--sft_model_path", sft_run / paths.SFT_DIR, "--reward_model_path", rm_run / paths.RM_DIR)

    def train(workdir: Path) -> None:
        result = run_ok("train_grpo.py", "--tiny", *models, cwd=workdir)
        (workdir / "train.out").write_text(result.stdout)
        (workdir / "train.err").write_text(result.stderr)

    return built_once(tmp_path_factory, "grpo_run", train)


@pytest.fixture(scope="session")
def compare_run(tiny_base, sft_run, rm_run, ppo_run, dpo_run, grpo_run, tmp_path_factory) -> Path:
    """The working folder of compare.py over every method: the session's SFT, PPO, DPO and GRPO models and
    a short PPO from the base (COMPARE_PPO_BASE_EPISODES answers, trained here); the table in compare.out, stderr in
    compare.err, the report in eval_metrics.json and its chart beside it."""
    reward = ("--reward_model_path", rm_run / paths.RM_DIR)
    models = ("--sft_model_path", sft_run / paths.SFT_DIR, *reward)

    def compare(workdir: Path) -> None:
        base = ("--base_model_path", tiny_base, "--value_model_path", tiny_base)
        episodes = ("--total_episodes", COMPARE_PPO_BASE_EPISODES, "--num_eval_questions", 0)
        # no --sft_model_path: PPO from the base reads no SFT model, and refuses the flag
        run_ok("train_ppo.py", "--tiny", "--from_base", *reward, *base, *episodes, cwd=workdir)
        methods = {
            "--model_path": ppo_run / paths.PPO_DIR,
            "--dpo_model_path": dpo_run / paths.DPO_DIR,
            "--grpo_model_path": grpo_run / paths.GRPO_DIR,
            "--metrics_file": workdir / "eval_metrics.json",
        }
        flags = [str(word) for pair in methods.items() for word in pair]
        result = run_ok("compare.py", "--tiny", *models, *flags, "--base_model_path", tiny_base, cwd=workdir)
        (workdir / "compare.out").write_text(result.stdout)
        (workdir / "compare.err").write_text(result.stderr)

    return built_once(tmp_path_factory, "compare_run", compare)
