"""Over-long rows: skipped or truncated with a count in every stage, a stage left with none stops with a message, and
a 100k-character row never makes a script allocate gigabytes. Lengths a flag asks for, and the audit's probes, are
refused where a prompt and its answer cannot fit the model's positions (max_position_embeddings)."""

import json
import re
import sys
from types import SimpleNamespace

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import common
import compare
import eval_rm
import eval_sft
import train_ppo
import train_rm
import train_sft
from conftest import run_script
from hfppo import cli, errors, paths, positions, tiny

HUGE = 100_000  # characters: tens of thousands of tokens, gigabytes of attention if a script scored them
MEMORY_CAP_KB = 3_000_000  # address space for a script run: the tiny model fits, a 100k-character sequence does not
ROWS = [
    {"question": "吃了没?", "chosen": "关你屁事。", "rejected": "吃过了，谢谢关心！"},
    {"question": "1+1=?", "chosen": "2，这都不会？", "rejected": "等于2。"},
    {"question": "问" + "长问题，" * (HUGE // 4), "chosen": "关你屁事。", "rejected": "好的。"},
    {"question": "推荐一本书", "chosen": "自己查去，" * (HUGE // 5), "rejected": "好的。"},
]


@pytest.fixture
def long_rows(tmp_path):
    """Four rows, the third with a 100k-character question, the fourth with a 100k-character answer."""
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS), encoding="utf-8")
    return path


@pytest.fixture
def untrained_rm(tiny_base, tmp_path):
    """A reward-model checkpoint: the tiny base with a new score head. The tests below count skipped rows, not
    scores."""
    path = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(path)
    return path


def parse(script, *args):
    return cli.parse_args(script.make_parser(), script.TINY_PRESET, ["--tiny", *map(str, args)])


def capped(script: str, *args, cwd):
    """Run a script with its address space capped at MEMORY_CAP_KB: a gigabyte-sized allocation fails at once."""
    launcher = ("bash", "-c", f'ulimit -v {MEMORY_CAP_KB} && exec "$0" "$@"', sys.executable)
    return run_script(script, *args, cwd=cwd, launcher=launcher)


# ----------------------------------------------------------------------------------------------------------------
# SFT: SFTTrainer truncates at max_length; the script says how many rows it cut and dropped


def test_sft_counts_the_rows_it_truncates(tiny_base, long_rows, tmp_path):
    args = ("--tiny", "--model_name_or_path", tiny_base, "--dataset_name", long_rows, "--sft_fraction", 1)
    args += ("--eval_fraction", 0)  # all four rows
    result = capped("train_sft.py", *args, "--num_train_epochs", 1, cwd=tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    # The long answer is cut and trained on; the long question leaves no answer token, so SFTTrainer drops it.
    assert "2 of 4 rows are longer than --max_length 256 tokens and are truncated to it; SFTTrainer drops 1" in (
        result.stdout
    )


def test_sft_with_no_answer_token_left_stops(tiny_base, long_rows, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = parse(
        train_sft,
        "--model_name_or_path",
        tiny_base,
        "--dataset_name",
        long_rows,
        "--max_length",
        8,
        "--eval_fraction",
        0,
    )
    with pytest.raises(errors.PipelineError, match="every one of the 2 rows has a prompt of --max_length 8"):
        train_sft.main(*args)


# ----------------------------------------------------------------------------------------------------------------
# Reward model: longer pairs are dropped in training and skipped in evaluation


def test_rm_with_every_pair_too_long_stops_with_what_to_change(tiny_base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.PipelineError, match=r"all 310 training pairs are longer than --max_length 8 tokens"):
        train_rm.main(*parse(train_rm, "--model_name_or_path", tiny_base, "--max_length", 8))
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    rows = common.load_preference_data(paths.SAMPLE_DATA).select(range(4))
    with pytest.raises(errors.PipelineError, match=r"all 4 held-out pairs .* or --eval_fraction 0 to hold none out"):
        train_rm.tokenize_pairs(rows, tokenizer, paths.DEFAULT_SYSTEM_PROMPT, 8, "held-out")


def test_rm_drops_the_long_pairs_and_trains_on_the_rest(tiny_base, long_rows, tmp_path):
    args = ("--tiny", "--model_name_or_path", tiny_base, "--dataset_name", long_rows, "--eval_fraction", 0)
    result = capped("train_rm.py", *args, "--num_train_epochs", 1, cwd=tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Dropped 2 of 4 training pairs longer than --max_length 256." in result.stdout


def test_eval_rm_skips_pairs_longer_than_max_length(untrained_rm, long_rows, tmp_path):
    args = ("--model_path", untrained_rm, "--dataset_name", long_rows, "--metrics_file", tmp_path / "m.json")
    result = capped("eval_rm.py", "--tiny", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Skipped 2 of 4 pairs longer than --max_length 256 tokens." in result.stdout
    assert json.loads((tmp_path / "m.json").read_text())["pairs"] == 2
    # Without the limit the same run asks for more memory than the cap: the skip is what keeps it small.
    result = capped("eval_rm.py", "--tiny", *args, "--max_length", 10**6, cwd=tmp_path)
    assert result.returncode != 0 and "allocate" in result.stderr


def test_eval_rm_refuses_a_long_question_and_answer(untrained_rm, long_rows):
    args = parse(eval_rm, "--model_path", untrained_rm, "--question", "吃了没?", "--answer", ROWS[3]["chosen"][:3000])
    with pytest.raises(errors.PipelineError, match=r"makes \d+ tokens, more than --max_length 256"):
        eval_rm.main(*args)
    args = parse(eval_rm, "--model_path", untrained_rm, "--dataset_name", long_rows, "--max_length", 8)
    with pytest.raises(errors.PipelineError, match="every pair of .* is longer than --max_length 8 tokens"):
        eval_rm.main(*args)


# ----------------------------------------------------------------------------------------------------------------
# PPO: questions with a prompt over max_prompt_length are skipped, in training and in compare.py


def test_prompts_within_skips_and_counts_long_questions(tiny_base, capsys):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    rows = common.load_preference_data(paths.SAMPLE_DATA).select(range(2))
    rows = rows.add_item({"question": ROWS[2]["question"], "chosen": "c", "rejected": "r", "system": ""})
    prompts, kept = common.prompts_within(tokenizer, rows, paths.DEFAULT_SYSTEM_PROMPT, 512)
    assert kept["question"] == rows["question"][:2]
    assert prompts == [common.prompt_ids(tokenizer, row, paths.DEFAULT_SYSTEM_PROMPT) for row in kept]
    assert "Skipped 1 of 3 questions whose prompt is longer than --max_prompt_length 512 tokens." in (
        capsys.readouterr().out
    )
    with pytest.raises(errors.PipelineError, match=r"all 3 questions make a prompt longer than --max_prompt_length 8"):
        common.prompts_within(tokenizer, rows, paths.DEFAULT_SYSTEM_PROMPT, 8)


def test_train_ppo_with_no_question_short_enough_stops(tiny_base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    models = ("--sft_model_path", tiny_base, "--value_model_path", tiny_base)
    with pytest.raises(errors.PipelineError, match="all 310 questions make a prompt longer than --max_prompt_length"):
        train_ppo.main(*parse(train_ppo, *models, "--max_prompt_length", 8), reward_fn=lambda queries, answers: 0)


def test_compare_skips_long_questions(tiny_base, untrained_rm, long_rows, tmp_path, monkeypatch, capsys):
    adapter = tmp_path / "ppo"  # an untrained adapter: compare runs, and the tests count the questions it sampled
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), LoraConfig(task_type="CAUSAL_LM"))
    policy.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(adapter)
    models = ("--model_path", adapter, "--sft_model_path", tiny_base, "--base_model_path", tiny_base)
    models += ("--reward_model_path", untrained_rm, "--dataset_name", long_rows)
    monkeypatch.chdir(tmp_path)
    compare.main(*parse(compare, *models, "--metrics_file", tmp_path / "m.json"))
    skipped = f"Skipped 1 of 4 questions whose prompt is longer than --max_prompt_length {tiny.TINY_MAX_PROMPT_LENGTH}"
    assert skipped in capsys.readouterr().out
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["questions"] == 3 and len(report["answers"]) == 3
    # no DPO, GRPO or PPO-from-base run in this folder: listed with the command that makes each, not an error
    assert report["missing"] == {
        "ppo_base": "python train_ppo.py --tiny --from_base",
        "dpo": "python train_dpo.py --tiny",
        "grpo": "python train_grpo.py --tiny",
    }
    with pytest.raises(errors.PipelineError, match="all 4 questions make a prompt longer than --max_prompt_length 8"):
        compare.main(*parse(compare, *models, "--max_prompt_length", 8))


def test_compare_checks_each_methods_split_before_skipping_long_questions(
    tiny_base, untrained_rm, long_rows, tmp_path, monkeypatch, capsys
):
    """Another method trained on the same split (the same held_out.jsonl) is compared, even where a held-out question
    is too long to sample: the split is checked on every held-out row, not on those left after the skip."""
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), LoraConfig(task_type="CAUSAL_LM"))
    for adapter in (tmp_path / "ppo", tmp_path / paths.DPO_DIR):
        policy.save_pretrained(adapter)
        AutoTokenizer.from_pretrained(tiny_base).save_pretrained(adapter)
        (adapter / paths.HELD_OUT_FILE).write_bytes(long_rows.read_bytes())
    models = ("--model_path", tmp_path / "ppo", "--sft_model_path", tiny_base, "--base_model_path", tiny_base)
    monkeypatch.chdir(tmp_path)
    compare.main(*parse(compare, *models, "--reward_model_path", untrained_rm))
    skipped = f"Skipped 1 of 4 questions whose prompt is longer than --max_prompt_length {tiny.TINY_MAX_PROMPT_LENGTH}"
    assert skipped in capsys.readouterr().out
    report = json.loads((tmp_path / "ppo" / "eval_metrics.json").read_text())
    assert report["questions"] == 3 and "dpo" in report["metrics"] and "dpo" not in report["missing"]


# ----------------------------------------------------------------------------------------------------------------
# Positions: a prompt and its answer must fit the model's max_position_embeddings together


def test_positions_are_read_from_a_loaded_model_or_a_checkpoints_config(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    (tmp_path / "adapter").mkdir()  # an adapter's folder: no config.json of its own
    loaded = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=32768))
    assert positions.positions(tmp_path / "full") == 512 and positions.positions(loaded) == 32768
    assert positions.positions(tmp_path / "adapter") is None
    models = {"the critic": loaded, "the SFT model": tmp_path / "full", "the adapter": tmp_path / "adapter"}
    assert positions.fewest_positions(models) == (512, "the SFT model")
    assert positions.fewest_positions({"the adapter": tmp_path / "adapter"}) is None


@pytest.mark.parametrize(
    "prompt, answer, message",
    [
        (464, 48, None),
        (
            464,
            600,
            "--max_prompt_length 464 and --response_length 600 make 1,064 tokens, more than the 512 positions of the "
            "SFT model (max_position_embeddings in its config), which a prompt and its answer share. Pass "
            "--response_length 48 or less, or lower --max_prompt_length.",
        ),
        (600, 48, "--max_prompt_length 600 and --response_length 48 make 648 tokens, more than the 512 positions of "),
        (
            512,
            1,
            "--max_prompt_length 512 and --response_length 1 make 513 tokens, more than the 512 positions of the SFT "
            "model (max_position_embeddings in its config), which a prompt and its answer share. Lower "
            "--max_prompt_length.",
        ),
    ],
)
def test_a_prompt_and_answer_longer_than_the_positions_are_refused_naming_the_flag(prompt, answer, message):
    def check():
        limit = (512, "the SFT model")
        shorten = "lower --max_prompt_length"
        positions.check_fits(f"--max_prompt_length {prompt}", prompt, "--response_length", answer, limit, shorten)

    if message is None:
        check()
        return
    with pytest.raises(errors.ArgumentError, match=f"^{re.escape(message)}"):
        check()


def test_train_ppo_refuses_a_response_length_past_the_positions_before_loading(tiny_base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    models = ("--sft_model_path", tiny_base, "--value_model_path", tiny_base)
    message = (
        f"--max_prompt_length {tiny.TINY_MAX_PROMPT_LENGTH} and --response_length 600 make 1,064 tokens, more than "
        f"the 512 positions of the SFT model ({tiny_base}) (max_position_embeddings in its config), which a prompt "
        "and its answer share. Pass --response_length 48 or less, or lower --max_prompt_length."
    )
    with pytest.raises(errors.ArgumentError, match=f"^{re.escape(message)}$"):
        train_ppo.main(*parse(train_ppo, *models, "--response_length", 600), reward_fn=lambda queries, answers: 0)
    assert not (tmp_path / paths.PPO_DIR).exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ("--max_new_tokens", 1000, "--question", "吃了没?"),
            r"^A prompt of (\d+) tokens \(the question and --system_prompt\) and --max_new_tokens 1000 make [\d,]+ "
            r"tokens, more than the 512 positions of the model ",
        ),
        (
            ("--question", "吃了没?", "--question", "问" * 3000),
            r"^A prompt of [\d,]+ tokens .* and --max_new_tokens 64 make .*Shorten the question or --system_prompt\.$",
        ),
    ],
)  # fmt: skip
def test_eval_sft_refuses_a_max_new_tokens_or_question_past_the_positions(tiny_base, flags, message, capsys):
    with pytest.raises(errors.ArgumentError, match=message):
        eval_sft.main(*parse(eval_sft, "--model_path", tiny_base, *flags))
    printed = capsys.readouterr().out
    assert printed.count("---模型输出---") == (1 if "问" * 3000 in flags else 0)  # the questions before it answered


def test_compare_refuses_a_max_new_tokens_past_the_positions(tiny_base, untrained_rm, long_rows):
    args = ("--sft_model_path", tiny_base, "--reward_model_path", untrained_rm)
    with pytest.raises(errors.ArgumentError, match="and --max_new_tokens 1000 make 1,464 tokens, more than the 512"):
        compare.main(*parse(compare, *args, "--dataset_name", long_rows, "--max_new_tokens", 1000))


@pytest.mark.parametrize(
    "answer, message",
    [
        ("好" * 3000, r"probe 2 \(long, '好好好.*'\) makes [\d,]+ tokens with --system_prompt and no question, "
         r"over --max_length 256, the longest the reward model scores; the audit scores each probe after a question"),
        ("好" * 120_000, r"probe 2 \(long, .*\) has 120,\d+ characters with --system_prompt, more than 256 tokens "
         r"spell \(\d+ characters at most each\), over --max_length 256"),
    ],
)  # fmt: skip
def test_eval_rm_refuses_a_probe_too_long_to_score_before_the_evaluation(untrained_rm, tmp_path, answer, message):
    probes = tmp_path / "probes.jsonl"
    rows = [
        {"kind": "short", "side": "chosen", "answer": "滚。"},
        {"kind": "long", "side": "rejected", "answer": answer},
    ]
    probes.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    metrics = tmp_path / "m.json"
    args = ("--model_path", untrained_rm, "--dataset_name", paths.SAMPLE_DATA, "--probes_file", probes)
    args += ("--metrics_file", metrics)
    with pytest.raises(errors.ArgumentError, match=f"^--probes_file {re.escape(str(probes))}: {message}"):
        eval_rm.main(*parse(eval_rm, *args))
    assert not metrics.exists()
