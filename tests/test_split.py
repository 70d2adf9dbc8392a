"""One held-out split for the whole pipeline (issue 13): the same rows in every stage, never trained on by any."""

import filecmp
import math

import pytest
from datasets import Dataset

import common
import train_ppo
import train_rm
import train_sft
from hfppo import cli, data_files, errors, paths, resuming

SAMPLE = common.load_preference_data(paths.SAMPLE_DATA)
STAGES = (train_sft, train_rm, train_ppo)


def parse(script, *args):
    return cli.parse_args(script.make_parser(), script.TINY_PRESET, ["--tiny", *map(str, args)])


def questions(rows: Dataset) -> set[str]:
    return set(rows["question"])


def test_every_stage_has_one_eval_fraction_with_the_same_default_and_range():
    defaults = {script.__name__: parse(script)[0].eval_fraction for script in STAGES}
    assert set(defaults.values()) == {paths.DEFAULT_EVAL_FRACTION}, defaults
    assert {cli.field_range("eval_fraction", script.make_parser().dataclass_types) for script in STAGES} == {"[0, 1)"}


def test_the_split_is_exact_disjoint_and_covers_every_row():
    train_rows, held_out = common.split_held_out(SAMPLE, paths.DEFAULT_EVAL_FRACTION)
    assert len(held_out) == 35  # ceil(10% of 345)
    assert len(train_rows) + len(held_out) == len(SAMPLE)
    assert not questions(train_rows) & questions(held_out)
    # both parts keep the data's order: SFT's --sft_fraction takes the first training rows
    position = {question: i for i, question in enumerate(SAMPLE["question"])}
    for part in (train_rows, held_out):
        assert [position[q] for q in part["question"]] == sorted(position[q] for q in part["question"])


def test_the_split_depends_on_the_questions_only_not_on_row_order_or_seed():
    _, held_out = common.split_held_out(SAMPLE, 0.2)
    _, shuffled = common.split_held_out(SAMPLE.shuffle(seed=1), 0.2)
    assert questions(held_out) == questions(shuffled)
    # not a slice of the file: the held-out rows are spread over it (the sample's categories run in blocks)
    first, last = SAMPLE["question"][: len(SAMPLE) // 2], SAMPLE["question"][len(SAMPLE) // 2 :]
    assert questions(held_out) & set(first) and questions(held_out) & set(last)


def test_a_larger_fraction_holds_out_a_superset():
    held = [questions(common.split_held_out(SAMPLE, fraction)[1]) for fraction in (0.05, 0.1, 0.2, 0.5)]
    assert all(smaller < larger for smaller, larger in zip(held, held[1:]))


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.2, 0.3, 0.5])
def test_a_repeated_question_stays_on_one_side(fraction):
    # every question of the first 20 rows appears three times, with different answers
    rows = SAMPLE.to_list()
    repeated = rows + [row | {"chosen": row["chosen"] + suffix} for row in rows[:20] for suffix in ("！", "？")]
    train_rows, held_out = common.split_held_out(Dataset.from_list(repeated), fraction)
    assert not questions(train_rows) & questions(held_out)
    assert len(held_out) >= len(repeated) * fraction


# Spellings of one question that a tokenizer sees as other text but a reader as the same question.
TWINS = {
    "trailing space": lambda q: q + " ",
    "leading newline": lambda q: "\n" + q,
    "space inside": lambda q: q[:1] + " " + q[1:],
    "tab and newline": lambda q: q[:2] + "\t\n" + q[2:],
    "no-break and ideographic spaces": lambda q: "\u3000" + q + "\u00a0",
    "zero-width space": lambda q: q[:1] + "\u200b" + q[1:],
    "full-width punctuation swapped": lambda q: q.translate(str.maketrans("?？!！,，", "？?！!，,")),
}


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_a_question_spelled_otherwise_stays_on_the_side_of_its_twin(twin, fraction):
    """The sample's questions once more, in another spelling: none may be trained on while its twin is held out (30
    of 35 held-out questions leaked so when the split compared raw text)."""
    rows = SAMPLE.to_list()
    twins = [row | {"question": TWINS[twin](row["question"]), "chosen": row["chosen"] + "！"} for row in rows]
    twins = [twin for row, twin in zip(rows, twins) if twin["question"] != row["question"]]
    assert len(twins) > len(rows) / 2  # punctuation to swap: in 206 of the 345 questions
    train_rows, held_out = common.split_held_out(Dataset.from_list(rows + twins), fraction)
    normalised = lambda part: {data_files.normalised(q) for q in part["question"]}  # noqa: E731
    assert not normalised(train_rows) & normalised(held_out)
    assert len(held_out) >= len(rows + twins) * fraction


@pytest.mark.parametrize("fraction", [0.05, paths.DEFAULT_EVAL_FRACTION, 0.5])
def test_data_without_such_twins_splits_by_question_rank_as_before(fraction):
    """The sample has no two questions alike after normalisation, so its held-out rows are the questions of lowest
    question_rank of their own text: the split models trained before normalisation were trained with."""
    assert len({data_files.normalised(q) for q in SAMPLE["question"]}) == len(SAMPLE)
    by_rank = sorted(SAMPLE["question"], key=lambda q: (common.question_rank(q), q))
    expected = set(by_rank[: math.ceil(len(SAMPLE) * fraction)])  # one row each
    _, held_out = common.split_held_out(SAMPLE, fraction)
    assert held_out.to_list() == [row for row in SAMPLE if row["question"] in expected]


def test_a_fraction_that_leaves_nothing_to_train_on_is_refused():
    rows = Dataset.from_list([SAMPLE[0]] * 3 + [SAMPLE[1]])  # two questions, three rows of one
    train_rows, held_out = common.split_held_out(rows, 0.25)
    assert len(held_out) + len(train_rows) == 4 and len(held_out) in (1, 3)
    with pytest.raises(errors.PipelineError, match="--eval_fraction 0.9 of 4 rows .* leaves none to train on"):
        common.split_held_out(rows, 0.9)


def test_eval_fraction_zero_holds_nothing_out():
    train_rows, held_out = common.split_held_out(SAMPLE, 0)
    assert (len(train_rows), len(held_out)) == (len(SAMPLE), 0)


def test_a_resumed_run_must_keep_eval_fraction():
    # eval_steps, eval_strategy, ... may change on resume; the rows held out may not
    assert not resuming.RESUMABLE_SETTINGS.fullmatch("eval_fraction")
    assert resuming.RESUMABLE_SETTINGS.fullmatch("eval_steps")
    for script in STAGES:
        assert resuming.run_settings(*parse(script))["eval_fraction"] == paths.DEFAULT_EVAL_FRACTION


def test_the_three_stages_save_the_same_held_out_rows_and_train_on_none_of_them(sft_run, rm_run, ppo_run):
    files = [sft_run / paths.SFT_DIR, rm_run / paths.RM_DIR, ppo_run / paths.PPO_DIR]
    files = [folder / paths.HELD_OUT_FILE for folder in files]
    assert all(filecmp.cmp(files[0], other, shallow=False) for other in files[1:])
    train_rows, held_out = common.split_held_out(SAMPLE, paths.DEFAULT_EVAL_FRACTION)
    saved = common.load_preference_data(files[0])
    assert saved["question"] == held_out["question"] and saved["chosen"] == held_out["chosen"]
    assert not questions(train_rows) & questions(saved)
    # SFT trained on the first --sft_fraction of the training rows, and says how many
    sft_rows = int(len(train_rows) * train_sft.TINY_PRESET["sft_fraction"])
    assert f"on {sft_rows} of {len(SAMPLE)} rows of {paths.SAMPLE_DATA}, {len(saved)} held out" in (
        (sft_run / "train.out").read_text()
    )
    assert f"on {len(train_rows)} pairs of {paths.SAMPLE_DATA}, {len(saved)} held out" in (
        (rm_run / "train.out").read_text()
    )


def test_ppo_refuses_models_trained_with_another_split(sft_run, rm_run, tiny_base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    models = ("--sft_model_path", sft_run / paths.SFT_DIR, "--reward_model_path", rm_run / paths.RM_DIR)
    args = parse(train_ppo, *models, "--value_model_path", tiny_base, "--eval_fraction", 0.2)
    sft_file = sft_run / paths.SFT_DIR / paths.HELD_OUT_FILE
    with pytest.raises(errors.PipelineError) as error:
        train_ppo.main(*args)
    message = str(error.value)
    assert "SFT model (--sft_model_path" in message and "another held-out split" in message
    assert str(sft_file) in message and f"saved as {paths.PPO_DIR / paths.HELD_OUT_FILE}" in message
    assert "same --eval_fraction" in message
    assert not (tmp_path / paths.PPO_DIR).exists()  # refused before anything was written
    # an SFT model without a held-out file (trained elsewhere) is not checked; the reward model is
    (tmp_path / "sft").mkdir()
    for item in (sft_run / paths.SFT_DIR).iterdir():
        if item.name != paths.HELD_OUT_FILE:
            (tmp_path / "sft" / item.name).symlink_to(item)
    args = parse(train_ppo, "--sft_model_path", tmp_path / "sft", *models[2:], "--value_model_path", tiny_base)
    args[0].eval_fraction = 0.2
    with pytest.raises(errors.PipelineError, match=r"the reward model \(--reward_model_path .*another held-out split"):
        train_ppo.main(*args)
