"""The LoRA adapter every RL method trains: its shape, and the check of --lora_target_modules."""

import re

import torch

from hfppo import errors

# The LoRA adapter each RL method trains on its starting model (PPO, DPO, GRPO): the same rank, scale and layers, so
# that the methods change the model through the same parameters and compare on equal terms. The original's PPO values.
LORA_R = 32
LORA_ALPHA = 8
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def check_target_modules(model: torch.nn.Module, targets: str | list[str] | None, where: str) -> None:
    """Refuse a --lora_target_modules name that matches none of `model`'s modules, by PEFT's rule: a list's names match
    a module by its last parts (q_proj: model.layers.0.self_attn.q_proj), one name alone is a regular expression of the
    whole path (TRL's ModelConfig passes it as such), all-linear every linear layer. PEFT fails only when no name
    matches anything and skips the rest in silence, which would train other layers than the flag says."""
    if targets is None or targets == "all-linear":  # unset: PEFT's layers for the architecture
        return
    paths = [name for name, _ in model.named_modules()]
    if isinstance(targets, str):
        try:
            missing = [] if any(re.fullmatch(targets, path) for path in paths) else [targets]
        except re.error as error:
            raise errors.PipelineError(
                f"--lora_target_modules {targets!r} is not a regular expression ({error})."
            ) from error
    else:
        missing = [name for name in targets if not any(path == name or path.endswith(f".{name}") for path in paths)]
    if missing:
        linear = dict.fromkeys(
            p.rsplit(".", 1)[-1] for p, m in model.named_modules() if isinstance(m, torch.nn.Linear)
        )
        raise errors.PipelineError(
            f"--lora_target_modules: {where} has no module {errors.join_names(missing)}, so that adapter would not be "
            f"where the flag says. Its linear layers are {errors.join_names(list(linear))}: name some of them (the "
            f"default is {' '.join(LORA_TARGET_MODULES)})."
        )


def adapter_parameters(shapes: dict[str, list[int]], targets: str | list[str] | None, rank: int) -> int:
    """The parameters of a LoRA adapter of `rank` on the model whose weights have `shapes` ({name: shape}, as in its
    safetensors headers): r x (inputs + outputs) for each linear layer `targets` names, by the rule of
    check_target_modules. Unset or all-linear: every linear layer but the embeddings' (an upper bound of PEFT's
    default per architecture)."""
    layers = {name.removesuffix(".weight"): shape for name, shape in shapes.items() if name.endswith(".weight")}
    linear = {path: shape for path, shape in layers.items() if len(shape) == 2}
    if targets is None or targets == "all-linear":
        chosen = [shape for path, shape in linear.items() if not path.endswith(("embed_tokens", "lm_head"))]
    elif isinstance(targets, str):
        chosen = [shape for path, shape in linear.items() if re.fullmatch(targets, path)]
    else:
        chosen = [
            shape
            for path, shape in linear.items()
            if any(path == name or path.endswith(f".{name}") for name in targets)
        ]
    return sum(rank * (outputs + inputs) for outputs, inputs in chosen)
