"""The offline tiny preset: its model config, tokenizer and training, its build, and whether a base is today's."""

import hashlib
import json
import tempfile
from pathlib import Path

from datasets import Dataset

from hfppo import checkpoints, paths, runtime, training

# Qwen's ChatML special tokens, in Qwen's id order. pad must differ from eos: a collator that masks pad in the
# labels would otherwise also mask the <|im_end|> the model has to learn to stop on.
PAD_TOKEN, CHAT_START_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# The tiny preset: a Qwen2-architecture model small enough to train on a 2-core CPU in seconds.
TINY_SEED = 0
TINY_VOCAB_SIZE = 6000  # an upper bound: the sample's characters and ASCII words fill about 2,300
TINY_MODEL_CONFIG = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=True,  # as Qwen2.5-0.5B
)
# Qwen2.5-Instruct's generation_config.json, so the tiny model carries the same sampling defaults as the real one.
QWEN_GENERATION_DEFAULTS = dict(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
# Random weights babble; the real base answers politely. A short SFT on the polite (`rejected`) answers gives the
# tiny base that starting point, so the demo shows what the real run shows. Short on purpose: the reward model starts
# from this base, and after 10 epochs the base had memorised the polite answers, which the reward model then told
# apart as "text the base knows" rather than by style. With 4 it builds in under half the time and the reward model
# ranks data/style_pairs.jsonl (pairs in styles the sample lacks) no worse (data/README.md has the sweep).
TINY_BASE_TRAINING = dict(
    num_train_epochs=4,
    learning_rate=3e-3,
    per_device_train_batch_size=8,
    lr_scheduler_type="cosine",
    warmup_steps=10,
    max_length=256,
)
TINY_RECIPE_FILE = "tiny_recipe.json"  # in the tiny base's folder: what it was built from (tiny_recipe)
# Lengths the tiny stages train with, which the scripts that read their models use too: PPO's answer length (what
# eval_ppo.py, compare.py and chat_web.py generate for the tiny models) and the reward model's conversation length
# (eval_rm.py).
TINY_RESPONSE_LENGTH = 48
TINY_RM_MAX_LENGTH = 256
# The longest prompt PPO and the comparison keep: with an answer of TINY_RESPONSE_LENGTH it fills the positions.
TINY_MAX_PROMPT_LENGTH = TINY_MODEL_CONFIG["max_position_embeddings"] - TINY_RESPONSE_LENGTH


def tiny_recipe(seed: int = TINY_SEED) -> dict:
    """What the tiny base is built from, saved beside it as TINY_RECIPE_FILE: a folder built from anything else (an
    earlier version of this project, other sample data) is not the base today's code and README describe."""
    return dict(
        seed=seed,
        tokenizer="byte-level BPE over the training rows, one token per Chinese character",
        vocab_size=TINY_VOCAB_SIZE,
        model=TINY_MODEL_CONFIG,
        training=TINY_BASE_TRAINING,
        data_sha256=hashlib.sha256(paths.SAMPLE_DATA.read_bytes()).hexdigest(),
    )


def stale_tiny_base(path: Path) -> bool:
    """Whether `path` is the tiny preset's own folder (TINY_BASE_DIR) built by another recipe than today's. Only that
    folder, which build_tiny_base alone writes, is ever rebuilt: any other is the user's."""
    if not path.is_dir() or path.resolve() != paths.TINY_BASE_DIR.resolve():
        return False
    # None if missing or damaged: not known to be today's base.
    recipe, _ = checkpoints.json_file(path / TINY_RECIPE_FILE)
    return recipe != tiny_recipe()


def build_tiny_tokenizer(texts: list[str]):
    """A byte-level BPE tokenizer trained on `texts`, with Qwen's special tokens and Qwen2.5's chat template.

    Every Chinese character is a token of its own: merges stop at character boundaries, as in Chinese BERT's
    vocabulary. Merged across characters, most of the vocabulary became words and phrases (烦我, 别烦我, 烦死了 ...
    and 懒得理你 whole), each seen a few times, and a reward model trained on the sample learned those tokens rather
    than the characters they share, and ranked pairs in styles the sample does not use far worse (data/README.md has
    the measurements).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from trl.chat_template_utils import qwen2_5_chat_template

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{Han}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=[PAD_TOKEN, CHAT_START_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=qwen2_5_chat_template,
        model_max_length=TINY_MODEL_CONFIG["max_position_embeddings"],
    )


def build_tiny_base(path: str | Path, texts: list[str], polite: Dataset, seed: int = TINY_SEED) -> None:
    """Build the offline tiny base at `path`: a tokenizer trained on `texts`, random Qwen2 weights, then a short SFT
    on `polite` (prompt-completion examples of polite answers).

    Deterministic for a given seed. Saved as a checkpoint is (`staged_save`), so an interrupted build never leaves a
    folder that looks complete, and a base built by another recipe (stale_tiny_base) is replaced whole.
    """
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    path = Path(path)
    if path.is_dir():
        print(
            f"{path} was built by another recipe of the tiny preset (an earlier version of this project, or other "
            "sample data): building it again. Models trained from the old one need training again; the stages after "
            "them refuse a model whose tokenizer differs from the policy's."
        )
    print(f"Building the tiny base model at {path} (once; later runs reuse it).")
    tokenizer = build_tiny_tokenizer(texts)

    set_seed(seed)
    pad_id, eos_id = tokenizer.convert_tokens_to_ids([PAD_TOKEN, EOS_TOKEN])
    config = Qwen2Config(
        vocab_size=len(tokenizer), bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id, **TINY_MODEL_CONFIG
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id, pad_token_id=pad_id, eos_token_id=[eos_id, pad_id], **QWEN_GENERATION_DEFAULTS
    )
    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(
            output_dir=scratch,
            seed=seed,
            bf16=False,  # fp32 everywhere, so the same seed gives the same weights
            activation_checkpointing=False,
            report_to="none",
            save_strategy="no",
            logging_strategy="epoch",  # the loss in the progress bar, once an epoch
            dataloader_pin_memory=runtime.accelerator_available(),
            **TINY_BASE_TRAINING,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=polite, processing_class=tokenizer)
        training.compact_progress(trainer)
        trainer.train()
    with checkpoints.staged_save(path) as staging:
        trainer.model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / TINY_RECIPE_FILE).write_text(json.dumps(tiny_recipe(seed), indent=2) + "\n")
