"""Chat formatting shared by every stage: the prompt a policy answers from, and what SFT puts its loss on."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer
from trl import SFTConfig, SFTTrainer

import common
from hfppo import errors, paths, tiny

ROW = {"question": "吃了没?", "chosen": "关你屁事,自己吃去。", "rejected": "吃过了,谢谢关心!", "system": ""}


def test_prompt_ends_with_the_assistant_generation_prompt(tiny_base):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    text = tokenizer.decode(common.prompt_ids(tokenizer, ROW, paths.DEFAULT_SYSTEM_PROMPT))
    assert text == (
        f"<|im_start|>system\n{paths.DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\n吃了没?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_rows_own_system_prompt_wins_over_the_default():
    messages = common.prompt_messages(dict(ROW, system="你是诗人。"), paths.DEFAULT_SYSTEM_PROMPT)
    assert messages[0] == {"role": "system", "content": "你是诗人。"}
    assert common.prompt_messages(ROW, "默认")[0]["content"] == "默认"


def test_rm_pair_is_the_two_conversations_cut_at_the_answers_eos(tiny_base):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    pair = common.rm_example(ROW, tokenizer, paths.DEFAULT_SYSTEM_PROMPT)
    prompt = common.prompt_ids(tokenizer, ROW, paths.DEFAULT_SYSTEM_PROMPT)
    for column in ("chosen", "rejected"):
        ids = pair[f"{column}_ids"]
        assert ids[: len(prompt)] == prompt
        # the template's "\n" after <|im_end|> is cut: the pair ends where a sampled answer stops
        assert tokenizer.decode(ids[len(prompt) :]) == ROW[column] + tiny.EOS_TOKEN


def test_a_template_without_eos_after_the_answer_is_refused(tiny_base):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tokenizer.eos_token = tiny.PAD_TOKEN  # not what the template ends an assistant turn with
    with pytest.raises(errors.PipelineError, match="train_rm.py --eos_token"):
        common.conversation_ids(tokenizer, ROW, paths.DEFAULT_SYSTEM_PROMPT, ROW["chosen"])


def test_sft_labels_cover_the_answer_and_not_the_prompt(tiny_base, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", bf16=False, activation_checkpointing=False)
    trainer = SFTTrainer(
        model=str(tiny_base),
        args=args,
        train_dataset=Dataset.from_list([common.sft_example(ROW, paths.DEFAULT_SYSTEM_PROMPT)]),
        processing_class=tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[0]])
    input_ids, labels = batch["input_ids"][0], batch["labels"][0]
    trained = labels != -100
    prompt = common.prompt_ids(tokenizer, ROW, paths.DEFAULT_SYSTEM_PROMPT)
    assert not trained[: len(prompt)].any()
    assert trained[len(prompt) :].all()
    assert tokenizer.decode(input_ids[trained]) == ROW["chosen"] + "<|im_end|>\n"
    assert torch.equal(input_ids[: len(prompt)], torch.tensor(prompt))
