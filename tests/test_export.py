"""export.py: a stage's LoRA adapter merged into its base as a standalone model that gives the adapter model's logits,
loads without peft and samples as the pipeline does; and the usual message, before anything is written, for a bad
adapter, a bad base or an output folder that would destroy something."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import common
from conftest import FLOAT32_EPS, run_main, run_ok
from hfppo import checkpoints, paths, tiny

QUESTIONS = 8  # held-out conversations whose logits are compared


def export(adapter: Path, output: Path, *flags) -> None:
    """export.py --tiny run in this process on `adapter`, into `output`; the test fails unless it exits with 0."""
    result = run_main(
        "export.py", "--tiny", "--adapter_path", adapter, "--output_dir", output, *flags, cwd=output.parent
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def ppo_merged(ppo_run, tmp_path_factory) -> Path:
    """The session's PPO adapter, exported with the tiny preset's defaults."""
    output = tmp_path_factory.mktemp("export") / "ppo_merged"
    export(ppo_run / paths.PPO_DIR, output)
    return output


def adapter_model(adapter: Path) -> PeftModel:
    """The adapter on the base its adapter_config.json names, unmerged, in float32: what the export must reproduce."""
    base = AutoModelForCausalLM.from_pretrained(common.adapter_base(adapter, ""), dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter).eval()


def merge_tolerance(model: PeftModel, hidden: torch.Tensor) -> torch.Tensor:
    """How far each logit of the merged model may lie from the adapter model's (tests/README.md, rule 2), given the
    adapter model's last hidden states `hidden` (after the final norm: the logits are the output embedding E of them).

    An adapted layer computes W x + s B (A x) unmerged, (W + s B A) x merged with W + s B A rounded once: the same
    products, summed in another order, each output a nest of sums no deeper than in_features + r terms, so the two
    differ by at most (in_features + r) FLOAT32_EPS times the sum of the products' magnitudes (float32_sum_tolerance's
    bound). To first order such a change reaches the logits at its own relative size: the residual stream and RMSNorm
    carry it, and a product of two adapted outputs (q . k, gate x up) adds both factors' changes, so every adapted
    layer counts, parallel ones included. Each logit v then moves by at most N FLOAT32_EPS sum_d |E_vd h_d|, N the sum
    of in_features + r over the adapted layers (5,504 for the tiny model's 28). Measured on 16 held-out conversations
    of the tiny PPO and DPO adapters, on an AVX-512 AMD EPYC and with its AVX2 and plain kernels forced
    (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS): at most 1.2e-3 of this bound (6.7e-6 against 1.1e-3 or more). The
    adapters themselves move the logits by 3.2 and more, and DPO's merge rounded through bfloat16 by 0.018: both beyond
    it."""
    depth = sum(layer.in_features + layer.r["default"] for layer in model.modules() if isinstance(layer, LoraLayer))
    embedding = model.get_base_model().get_output_embeddings().weight
    return depth * FLOAT32_EPS * (hidden.abs() @ embedding.abs().T)


def assert_merged_gives_the_adapter_models_logits(adapter: Path, merged: Path) -> None:
    """The merged model's logits within merge_tolerance of the adapter model's on held-out conversations (prompt and
    chosen answer), where the adapter moves some logit beyond it; and its weights peft's merge, bit for bit."""
    model = adapter_model(adapter)
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    rows = common.load_preference_data(adapter / paths.HELD_OUT_FILE).select(range(QUESTIONS))
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([common.conversation_ids(tokenizer, row, row["system"], row["chosen"])])
            output = model(ids, output_hidden_states=True)
            tolerance = merge_tolerance(model, output.hidden_states[-1])
            difference = (plain(ids).logits - output.logits).abs()
            assert (difference <= tolerance).all().item(), f"logits up to {difference.max():.3g} apart"
            with model.disable_adapter():  # an export that left the adapter out would have failed just above
                assert ((model(ids).logits - output.logits).abs() > tolerance).any().item()
    # The same call as the export's, in this process, on the same weights: the same bits (tests/README.md, rule 1).
    reference = model.merge_and_unload(safe_merge=True).state_dict()
    saved = load_file(merged / "model.safetensors")
    assert saved and all(torch.equal(tensor, reference[name]) for name, tensor in saved.items())


def test_the_merged_ppo_model_gives_the_adapter_models_logits(ppo_run, ppo_merged):
    assert_merged_gives_the_adapter_models_logits(ppo_run / paths.PPO_DIR, ppo_merged)


def test_a_dpo_adapter_merges_as_well(dpo_run, tmp_path):
    export(dpo_run / paths.DPO_DIR, tmp_path / "dpo_merged", "--method", "dpo")
    assert_merged_gives_the_adapter_models_logits(dpo_run / paths.DPO_DIR, tmp_path / "dpo_merged")


def test_the_folder_is_a_model_with_the_stages_tokenizer_and_held_out_rows(ppo_run, ppo_merged):
    adapter = ppo_run / paths.PPO_DIR
    assert (
        checkpoints.model_kind(ppo_merged) == "language model" and checkpoints.checkpoint_problem(ppo_merged) is None
    )
    assert (ppo_merged / "model.safetensors").is_file() and not list(ppo_merged.glob("adapter_*"))
    messages = common.prompt_messages({"question": "吃了没?"}, paths.DEFAULT_SYSTEM_PROMPT)
    rendered = [AutoTokenizer.from_pretrained(path).apply_chat_template(messages) for path in (adapter, ppo_merged)]
    assert rendered[0] == rendered[1]
    held_out = paths.HELD_OUT_FILE
    assert (ppo_merged / held_out).read_bytes() == (adapter / held_out).read_bytes()


def test_generation_config_holds_the_pipelines_sampling_not_the_bases(sft_run, ppo_merged):
    """sampling.sampling_config's, which every stage samples with: the SFT model's own carries Qwen's top_k 20, top_p
    0.8 and repetition penalty 1.05, and stops at pad as well as at eos."""
    base = json.loads((sft_run / paths.SFT_DIR / "generation_config.json").read_text())
    assert base["top_k"] == tiny.QWEN_GENERATION_DEFAULTS["top_k"]
    written = json.loads((ppo_merged / "generation_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(ppo_merged)
    assert written | {"transformers_version": None} == {
        "do_sample": True,
        "temperature": 0.7,
        "top_k": 0,
        "top_p": 1.0,
        "repetition_penalty": 1.0,
        "max_new_tokens": tiny.TINY_RESPONSE_LENGTH,
        "eos_token_id": tokenizer.convert_tokens_to_ids(tiny.EOS_TOKEN),
        "pad_token_id": tokenizer.convert_tokens_to_ids(tiny.PAD_TOKEN),
        "transformers_version": None,
    }


def test_bfloat16_writes_the_float32_merge_rounded(ppo_run, ppo_merged, tmp_path):
    export(ppo_run / paths.PPO_DIR, tmp_path / "bf16", "--dtype", "bfloat16")
    full = load_file(ppo_merged / "model.safetensors")
    with safe_open(tmp_path / "bf16" / "model.safetensors", "pt") as handle:
        assert {handle.get_slice(name).get_dtype() for name in handle.keys()} == {"BF16"}
    half = load_file(tmp_path / "bf16" / "model.safetensors")
    # a cast rounds each weight to nearest: the same bits whoever casts
    assert half.keys() == full.keys() and all(torch.equal(half[k], full[k].to(torch.bfloat16)) for k in full)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


# Loads the model in a Python where `import peft` fails, and says what it got.
LOAD_WITHOUT_PEFT = """
import json, sys
sys.modules["peft"] = None
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
libraries = sorted({type(module).__module__.split(".")[0] for module in model.modules()})
print(json.dumps({"class": type(model).__name__, "libraries": libraries, "peft": sys.modules["peft"] is not None}))
"""


def test_run_as_a_user_it_writes_beside_the_adapter_a_model_that_loads_without_peft(ppo_run, tmp_path):
    shutil.copytree(ppo_run / paths.PPO_DIR, tmp_path / paths.PPO_DIR)  # its base, the SFT model, by absolute path
    result = run_ok("export.py", "--tiny", cwd=tmp_path)
    merged = tmp_path / "checkpoint" / "ppo_merged"
    assert f"saved to {paths.PPO_DIR}_merged (float32)" in result.stdout
    assert "python eval_sft.py --tiny --model_path checkpoint/ppo_merged" in result.stdout
    loaded = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_PEFT, merged], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout.splitlines()[-1]) == {
        "class": "Qwen2ForCausalLM",
        "libraries": ["torch", "transformers"],
        "peft": False,
    }


def test_an_adapter_with_nan_weights_is_refused_before_anything_is_written(dpo_run, tmp_path):
    """Its files are whole: the check of its weights at load (checkpoints.check_finite) tells, before the merge."""
    adapter = tmp_path / "dpo"
    shutil.copytree(dpo_run / paths.DPO_DIR, adapter)
    weights = adapter / "adapter_model.safetensors"
    save_file({name: torch.full_like(tensor, float("nan")) for name, tensor in load_file(weights).items()}, weights)
    result = run_main("export.py", "--tiny", "--method", "dpo", "--adapter_path", adapter, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"the checkpoint at {adapter} holds weights that are not numbers (NaN or infinity)" in result.stderr
    assert "python train_dpo.py --tiny --output_dir" in result.stderr and not (tmp_path / "dpo_merged").exists()


# ----------------------------------------------------------------------------------------------------------------
# Mistakes, on hand-made folders: each stops before any model loads, with nothing written.


def fake_checkpoint(folder: Path, architecture: str = "Qwen2ForCausalLM") -> Path:
    """A model folder as the checks see one (as in test_outputs.py): config, weights, tokenizer config."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    save_file({"lm_head.weight": torch.ones(4)}, folder / "model.safetensors")
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


def fake_adapter(folder: Path) -> Path:
    """An adapter folder as the checks see one, on checkpoint/sft."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "checkpoint/sft"}))
    save_file({"lora_A.weight": torch.zeros(4)}, folder / "adapter_model.safetensors")
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes: what a refused run must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def bad_input(tmp_path: Path, case: str) -> tuple[list, str]:
    """(the flags, the message expected) for a bad adapter or base; fake_adapter's base is checkpoint/sft."""
    sft = tmp_path / "checkpoint" / "sft"
    if case == "no adapter":
        hint = "python train_ppo.py --tiny --output_dir nowhere"  # the user's own folder
        return ["--adapter_path", "nowhere"], f"no model at nowhere. Make it first: {hint}"
    if case == "no adapter, dpo":
        return ["--method", "dpo"], "no model at checkpoint/dpo. Make it first: python train_dpo.py --tiny"
    if case == "a whole model":
        fake_checkpoint(sft)
        return ["--adapter_path", sft], (
            f"--adapter_path {sft} is a whole language model, not a LoRA adapter: there is nothing to merge, and "
            "AutoModelForCausalLM.from_pretrained loads it as it is."
        )
    if case == "a reward model":
        fake_checkpoint(tmp_path / "rm", "Qwen2ForSequenceClassification")
        return ["--adapter_path", "rm"], "--adapter_path rm is a reward model, not a LoRA adapter"
    adapter = fake_adapter(tmp_path / "checkpoint" / "ppo")
    if case == "damaged weights":
        (adapter / "adapter_model.safetensors").write_bytes(b"\x40\x00\x00\x00")
        return [], "the checkpoint at checkpoint/ppo has a damaged adapter_model.safetensors"
    if case == "damaged config":
        (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": ')
        return [], "the checkpoint file checkpoint/ppo/adapter_config.json is not valid JSON"
    if case == "no base":
        return [], "no model at checkpoint/sft. Make it first: python train_sft.py --tiny"
    fake_checkpoint(sft, "Qwen2ForSequenceClassification")  # a reward model as the base
    return [], "checkpoint/sft is a Qwen2ForSequenceClassification model, not a language model (*ForCausalLM)"


INPUT_CASES = ["no adapter", "no adapter, dpo", "a whole model", "a reward model", "damaged weights", "damaged config"]
INPUT_CASES += ["no base", "a reward model as the base"]


@pytest.mark.parametrize("case", INPUT_CASES)
def test_a_bad_adapter_or_base_gets_one_message_naming_it(tmp_path, case):
    flags, message = bad_input(tmp_path, case)
    before = snapshot(tmp_path)
    result = run_main("export.py", "--tiny", *flags, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr and snapshot(tmp_path) == before


# --output_dir, and the message expected, for each output folder the guard refuses.
OUTPUT_CASES = {
    "the adapter": (
        "checkpoint/ppo",
        "--output_dir checkpoint/ppo is --adapter_path checkpoint/ppo, which this run reads",
    ),
    "inside the adapter": ("checkpoint/ppo/merged", "is inside --adapter_path checkpoint/ppo"),
    "the base": ("checkpoint/sft", "--output_dir checkpoint/sft is --adapter_path's base checkpoint/sft, which this"),
    "an adapter": ("mine", "--output_dir mine holds an adapter, and this script writes a language"),
    "DPO's adapter": ("checkpoint/dpo", "--output_dir checkpoint/dpo is DPO's folder checkpoint/dpo"),
    "a file": ("notes.txt", "--output_dir notes.txt is a file, not a folder"),
    "the data": (paths.ROOT / "data" / "merged", "is inside the pipeline's data folder"),
}


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_an_output_folder_that_would_destroy_something_is_refused(tmp_path, case):
    fake_adapter(tmp_path / "checkpoint" / "ppo")
    fake_checkpoint(tmp_path / "checkpoint" / "sft")
    fake_adapter(tmp_path / "checkpoint" / "dpo")
    fake_adapter(tmp_path / "mine")
    (tmp_path / "notes.txt").write_text("mine")
    output, message = OUTPUT_CASES[case]
    before, data = snapshot(tmp_path), snapshot(paths.ROOT / "data")
    result = run_main("export.py", "--tiny", "--output_dir", output, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr
    assert snapshot(tmp_path) == before and snapshot(paths.ROOT / "data") == data


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
        (["--method", "sft"], "argument --method: invalid choice: 'sft'"),  # a whole model: nothing to merge
        (["--temperature", "0"], "--temperature must be >= 0.01, got 0.0."),
    ],
)
def test_bad_flags_are_refused_before_anything_loads(tmp_path, flags, message):
    result = run_main("export.py", "--tiny", *flags, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
