"""The command line of every script: TRL's parser with errors that name the flag, --config files, ranges."""

import argparse
import copy
import dataclasses
import difflib
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import get_args, get_origin, get_type_hints

import torch
import yaml
from trl import TrlParser

from hfppo import errors, paths, runtime


class Parser(TrlParser):
    """TRL's parser, whose errors raise ArgumentError instead of printing the usage of every flag and exiting
    (argparse's documented way to change that is overriding `error`)."""

    def error(self, message: str):
        raise errors.ArgumentError(f"{message.rstrip('.')}. {HELP_HINT}")

    def _get_value(self, action, arg_string):
        """argparse's conversion, its message quoting the value as errors.shown does (a --config value can be huge)."""
        try:
            return super()._get_value(action, arg_string)
        except argparse.ArgumentError as error:
            message = error.message.replace(repr(arg_string), errors.shown(arg_string))
            raise argparse.ArgumentError(action, message) from None

    def _check_value(self, action, value):
        """argparse's choice check, its message quoting the value as errors.shown does."""
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as error:
            raise argparse.ArgumentError(action, error.message.replace(repr(value), errors.shown(value))) from None

    @staticmethod
    def _parse_dataclass_field(parser: argparse.ArgumentParser, dataclass_field: dataclasses.Field):
        """HfArgumentParser's flag for `dataclass_field`, less its metadata's RANGE_KEY: HfArgumentParser passes the
        metadata's other keys to argparse's add_argument, which takes no range (check_values reads it)."""
        metadata = dataclass_field.metadata
        if RANGE_KEY in metadata:
            dataclass_field = copy.copy(dataclass_field)
            dataclass_field.metadata = types.MappingProxyType({k: v for k, v in metadata.items() if k != RANGE_KEY})
        TrlParser._parse_dataclass_field(parser, dataclass_field)


HELP_HINT = "Run with --help to list every flag and its default."

# Every numeric setting has a valid range, checked for all of a script's dataclasses before any data or model loads.
# The project's own dataclasses give it beside the field, as its metadata's RANGE_KEY: field(default=0.05,
# metadata={"help": ..., "range": f"[0, {MAX_COEFFICIENT}]"}). NUMERIC_RANGES gives it, by field name, for the TRL and
# transformers configs the scripts expose (SFTConfig, RewardConfig, DPOConfig, GRPOConfig, ModelConfig), whose fields
# the project cannot annotate; "DPOConfig.beta" is the range of one dataclass's field where a name means different
# things in two (it outranks the plain name). Intervals in the usual notation: [1, inf) means >= 1, (0, 1] means
# 0 < x <= 1; NaN and +-inf are outside every one. Unset (None) is always allowed: it means "the default behaviour"
# where a field accepts it. tests/test_ranges.py fails for a numeric field of any script's parser that has no range.
RANGE_KEY = "range"
MAX_SEED = 2**32 - 1  # numpy's RandomState (transformers' set_seed seeds it) takes [0, 2**32 - 1]
# A loss term's weight: published ones are below 10 (KL coefficients 0.001 to 0.2, DPO's beta 0.1 to 0.5); at 1000 the
# term already swamps every other, and far larger ones only push the loss toward float32's overflow (3.4e38), inf and
# then NaN weights (--kl_coef 1e308 crashes, DPO's --beta 1e308 gives NaN).
MAX_COEFFICIENT = 1000
MAX_PORT = 65535  # a TCP port is 16 bits
# logits / temperature: below 0.01 sampling is greedy already (a logit gap of 1 becomes e^-100), and far smaller ones
# overflow the division (float16's 65504, float32's 3.4e38) into inf and NaN probabilities.
MIN_TEMPERATURE = 0.01
NUMERIC_RANGES = {
    # counts: of rows, tokens, steps, passes
    "per_device_train_batch_size": "[1, inf)",
    "per_device_eval_batch_size": "[1, inf)",
    "gradient_accumulation_steps": "[1, inf)",
    "max_length": "[1, inf)",
    "lora_r": "[1, inf)",
    "warmup_steps": "[0, inf)",
    "save_steps": "[0, inf)",
    "save_total_limit": "[0, inf)",
    "logging_steps": "(0, inf)",
    "eval_steps": "(0, inf)",
    "num_train_epochs": "(0, inf)",
    "max_steps": "[-1, inf)",  # -1 (or 0): num_train_epochs decides
    "max_completion_length": "[1, inf)",
    "generation_batch_size": "[1, inf)",
    "steps_per_generation": "[1, inf)",
    "num_iterations": "[1, inf)",
    "num_generations": "[2, inf)",  # GRPO's advantage compares the answers to one question: two at least
    "num_generations_eval": "[1, inf)",
    "num_completions_to_print": "[0, inf)",
    "max_tool_calling_iterations": "[0, inf)",
    "precompute_ref_batch_size": "[1, inf)",
    "ref_model_sync_steps": "[1, inf)",
    "eval_accumulation_steps": "[1, inf)",
    "eval_delay": "[0, inf)",
    "torch_empty_cache_steps": "[1, inf)",
    "pad_to_multiple_of": "[1, inf)",  # or a word (auto, none) the config itself reads
    # machinery: processes, workers, ports, timeouts
    "seed": f"[0, {MAX_SEED}]",
    "data_seed": f"[0, {MAX_SEED}]",
    "local_rank": "[-1, inf)",  # -1: not distributed
    "dataloader_num_workers": "[0, inf)",
    "dataloader_prefetch_factor": "[1, inf)",
    "dataset_num_proc": "[1, inf)",
    "ddp_bucket_cap_mb": "[1, inf)",
    "ddp_timeout": "[1, inf)",
    "vllm_server_port": f"[1, {MAX_PORT}]",
    "vllm_group_port": f"[1, {MAX_PORT}]",
    "vllm_server_timeout": "(0, inf)",
    "vllm_tensor_parallel_size": "[1, inf)",
    "vllm_gpu_memory_utilization": "(0, 1]",
    "vllm_max_model_length": "[1, inf)",
    # optimisation
    "learning_rate": "(0, inf)",
    "weight_decay": "[0, inf)",
    "adam_beta1": "[0, 1)",
    "adam_beta2": "[0, 1)",
    "adam_epsilon": "(0, inf)",
    "lora_alpha": "(0, inf)",
    "lora_dropout": "[0, 1)",
    "center_rewards_coefficient": "[0, inf)",
    "max_grad_norm": "[0, inf)",  # 0: the Trainer's "no clipping"
    "label_smoothing_factor": "[0, 1)",
    "neftune_noise_alpha": "[0, inf)",
    "router_aux_loss_coef": f"[0, {MAX_COEFFICIENT}]",
    # DPO. A negative beta learns the opposite preference; 0 learns nothing (TRL: the deviation from the reference).
    "DPOConfig.beta": f"(0, {MAX_COEFFICIENT}]",
    "label_smoothing": "[0, 0.5)",  # Robust DPO's flip probability (TRL: in [0, 0.5))
    "discopop_tau": "(0, inf)",
    "f_alpha_divergence_coef": "(0, inf)",
    "ld_alpha": "[0, 1]",
    "ref_model_mixup_alpha": "[0, 1]",
    # GRPO. beta is the KL term's weight: 0, TRL's default, is no KL term (and no reference model); below 0 it would
    # reward drifting from the reference.
    "GRPOConfig.beta": f"[0, {MAX_COEFFICIENT}]",
    "epsilon": "(0, inf)",
    "epsilon_high": "(0, inf)",
    "delta": "(0, inf)",
    "sapo_temperature_pos": "(0, inf)",
    "sapo_temperature_neg": "(0, inf)",
    "vespo_k_pos": "[0, inf)",
    "vespo_k_neg": "[0, inf)",
    "vespo_lambda_pos": "[0, inf)",
    "vespo_lambda_neg": "[0, inf)",
    "top_entropy_quantile": "[0, 1]",
    "entropy_coef": f"[0, {MAX_COEFFICIENT}]",
    "entropy_coef_min": f"[0, {MAX_COEFFICIENT}]",
    "entropy_coef_max": f"[0, {MAX_COEFFICIENT}]",
    "entropy_coef_delta": "(0, inf)",
    "entropy_target": "[0, inf)",
    "off_policy_mask_threshold": "(0, inf)",
    "vllm_importance_sampling_cap": "(0, inf)",
    "vllm_importance_sampling_clip_min": "[0, inf)",
    "vllm_importance_sampling_clip_max": "(0, inf)",
    # sampling
    "temperature": f"[{MIN_TEMPERATURE}, inf)",
    "top_p": "(0, 1]",
    "top_k": "[0, inf)",  # 0: no top-k filter
    "min_p": "[0, 1]",
    "repetition_penalty": "(0, inf)",
}


def parse_args(parser: TrlParser, tiny_preset: dict, args: list[str] | None = None) -> tuple:
    """Parse the command line and `--config`; with `--tiny`, the stage's tiny preset replaces the defaults.

    Precedence, lowest first: dataclass defaults, tiny preset, `--config` file, command-line flags. Every problem with
    the flags or the file (an unknown flag or key, a bad choice or value, a missing or unreadable file) is an
    ArgumentError, raised before any data or model loads.
    """
    args = list(sys.argv[1:] if args is None else args)
    args, config_file = _pop_config_flag(args)
    config = _read_config(config_file, parser) if config_file else {}
    defaults = _namespace(parser, [])
    namespace = _namespace(parser, args, config)
    if namespace.get("tiny"):
        parser.set_defaults(**tiny_preset)
        namespace = _namespace(parser, args, config)
        undone = [key for key in tiny_preset if key in config and namespace[key] == defaults[key] != tiny_preset[key]]
        if undone:
            raise errors.ArgumentError(
                f"--config {config_file} sets {errors.join_names(undone)} to the real run's values, which --tiny "
                "changes, and the file outranks --tiny (defaults < --tiny < --config < flags), so this would not be "
                "the tiny run. For the real run drop --tiny; for the tiny run, remove "
                f"{'that key' if len(undone) == 1 else 'those keys'} from the file (or set them with flags, which "
                "outrank it)."
            )
    check_values(namespace, parser.dataclass_types)
    parsed = []
    for dataclass_type in parser.dataclass_types:  # as HfArgumentParser.parse_args_into_dataclasses
        names = {f.name for f in dataclasses.fields(dataclass_type) if f.init}
        try:
            parsed.append(dataclass_type(**{name: value for name, value in namespace.items() if name in names}))
        except ValueError as error:  # the configs' own checks in __post_init__ (TrainingArguments has many)
            raise errors.ArgumentError(f"{errors.one_line(str(error)).rstrip('.')}. {HELP_HINT}") from error
        except (OSError, ImportError) as error:  # a JSON file a setting names (accelerator_config), its package
            raise errors.ArgumentError(
                "a file or package a setting needs is missing or unreadable: "
                f"{errors.one_line(str(error)).rstrip('.')}. {HELP_HINT}"
            ) from error
    _record_given(parsed, parser, args)
    return tuple(parsed)


# The attribute of each dataclass parse_args returns that holds the names of its fields the command line set.
GIVEN_ATTRIBUTE = "_given_on_command_line"


class _Unset(list):
    """What a field holds before the command line sets it, in `_record_given`'s parse: a list, so that an extend or
    append action (--question) adds to a copy of it, which a non-empty one then tells apart."""


def _record_given(parsed: list, parser: TrlParser, args: list[str]) -> None:
    """Set GIVEN_ATTRIBUTE on each of `parsed`: its fields whose flag `args` names (by any spelling), whatever value
    it gives. argparse sets a field's default only where the namespace it fills has none, so a namespace of _Unset
    values keeps them where no flag is given."""
    namespace = argparse.Namespace(**{action.dest: _Unset() for action in parser._actions})
    parser.parse_known_args(args, namespace)
    given = {name for name, value in vars(namespace).items() if not isinstance(value, _Unset) or value}
    for arguments in parsed:
        names = {f.name for f in dataclasses.fields(arguments)}
        object.__setattr__(arguments, GIVEN_ATTRIBUTE, frozenset(given & names))


def given(arguments) -> frozenset[str]:
    """The fields of `arguments` (a dataclass parse_args made) that the command line set: a check that refuses a flag
    which does nothing in the mode chosen refuses the flags a user typed, not a --config file's keys (one file serves
    several modes: configs/cpu/ppo.yaml) nor the defaults."""
    return getattr(arguments, GIVEN_ATTRIBUTE, frozenset())


def check_values(namespace: dict, dataclass_types: tuple = ()) -> None:
    """Every numeric setting within its range (finite; field_range's), no path empty (is_path_field), and bf16 only
    where a GPU has it."""
    for name, value in namespace.items():
        interval = field_range(name, dataclass_types)
        if interval is None or value is None:
            continue
        number = value
        if isinstance(value, str):  # a field that also takes words (pad_to_multiple_of: auto): its config reads those
            try:
                number = float(value)
            except ValueError:
                continue
        low, high = (float(bound) for bound in interval[1:-1].split(","))
        finite = isinstance(number, int | float) and not isinstance(number, bool) and math.isfinite(number)
        above = finite and (number > low if interval[0] == "(" else number >= low)
        below = finite and (number < high if interval[-1] == ")" else number <= high)
        if not (above and below):
            raise errors.ArgumentError(f"--{name} must be {_describe(interval)}, got {errors.shown(value)}.")
    empty = [name for name, value in namespace.items() if value == "" and is_path_field(name)]
    if empty:
        raise errors.ArgumentError(
            f"--{empty[0]} is empty, and it names a file or folder (an empty path is the current folder). Give "
            "the path, or leave the flag out to keep its default."
        )
    if namespace.get("bf16") and not runtime.bf16_available():
        where = "its GPU has no bf16 units" if torch.cuda.is_available() else "it has no GPU"
        raise errors.ArgumentError(
            f"--bf16 True needs a GPU with bf16 units, and this machine has none ({where}): on a CPU, training in "
            "bf16 fails or runs many times slower than fp32. Leave --bf16 out: its default is on exactly where it "
            "helps."
        )


# Fields named so that are paths of files or folders, whatever their script; so are PATH_SUFFIXES' names.
PATH_FIELDS = ("dataset_name", "model_name_or_path", "resume_from_checkpoint")
PATH_SUFFIXES = ("_path", "_dir", "_file")


def is_path_field(name: str) -> bool:
    """Whether field `name` holds the path of a file or folder (--output_dir, --dataset_name, ...), where an empty
    value would be the current folder."""
    return name in PATH_FIELDS or name.endswith(PATH_SUFFIXES)


def field_range(name: str, dataclass_types: tuple = ()) -> str | None:
    """The interval of field `name` of `dataclass_types`: its metadata's RANGE_KEY where the dataclass that has it
    gives one, else NUMERIC_RANGES' entry of that dataclass ("DPOConfig.beta"), else the name's own; None for a field
    with no range (a non-numeric one)."""
    for dataclass_type in dataclass_types:
        for dataclass_field in dataclasses.fields(dataclass_type):
            if dataclass_field.name == name and RANGE_KEY in dataclass_field.metadata:
                return dataclass_field.metadata[RANGE_KEY]
    for dataclass_type in dataclass_types:
        qualified = f"{dataclass_type.__name__}.{name}"
        if qualified in NUMERIC_RANGES and name in {f.name for f in dataclasses.fields(dataclass_type)}:
            return NUMERIC_RANGES[qualified]
    return NUMERIC_RANGES.get(name)


def _describe(interval: str) -> str:
    """ "[1, inf)" -> ">= 1", "(0, 1]" -> "in (0, 1]": the range as an error message says it."""
    low = interval[1:].split(",")[0]
    if interval.endswith("inf)"):
        return f"{'>' if interval[0] == '(' else '>='} {low}"
    return f"in {interval}"


def _pop_config_flag(args: list[str]) -> tuple[list[str], str | None]:
    """The arguments without `--config FILE` (or `--config=FILE`), and FILE."""
    found = [i for i, arg in enumerate(args) if arg == "--config" or arg.startswith("--config=")]
    if not found:
        return args, None
    if len(found) > 1:
        raise errors.ArgumentError("--config is given more than once; merge the files into one.")
    (i,) = found
    if args[i] != "--config":
        rest, path = args[:i] + args[i + 1 :], args[i].removeprefix("--config=")
    elif i + 1 == len(args) or args[i + 1].startswith("--"):
        raise errors.ArgumentError("--config needs a YAML file: --config configs/<stage>.yaml.")
    else:
        rest, path = args[:i] + args[i + 2 :], args[i + 1]
    if not path:  # `--config=` or `--config "$UNSET"`: reading no file would run the defaults in silence
        raise errors.ArgumentError(
            "--config is empty (an unset shell variable?). Pass the YAML file, --config configs/<stage>.yaml, or "
            "leave --config out to run the defaults."
        )
    return rest, path


# What YAML's aliases (*name) may add to a --config file, in characters once expanded: a settings file has no use for
# more, and nested aliases grow exponentially ("billion laughs": 435 bytes that expand to gigabytes).
MAX_ALIAS_EXPANSION = 100_000
# The name an `env:` key must have to be an environment variable a shell can set (POSIX's portable names).
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SCALARS = (str, int, float, bool)  # what one flag's value can be in YAML (bool and the numbers converted to text)


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping, on lines `lines` (1-based)."""

    def __init__(self, key, lines: tuple[int, int]):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.lines = key, lines


class AliasError(yaml.YAMLError):
    """Aliases that refer to themselves or expand beyond MAX_ALIAS_EXPANSION characters."""


class ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing what it would read without a word: a key given twice in one mapping (YAML forbids
    it; PyYAML keeps the last) and aliases beyond MAX_ALIAS_EXPANSION, checked before anything is built."""

    def construct_document(self, node):
        added = alias_expansion(node)
        if added > MAX_ALIAS_EXPANSION:
            raise AliasError(
                f"its aliases (*name) expand to {added:,} more characters, more than the {MAX_ALIAS_EXPANSION:,} a "
                "settings file may add. Write the values out, or repeat them less"
            )
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):  # the keys as written: a merge (<<: *base) may be overridden
            first_lines = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = self.construct_object(key_node)
                    if key in first_lines:
                        raise DuplicateKeyError(key, (first_lines[key], key_node.start_mark.line + 1))
                    first_lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def alias_expansion(root: yaml.Node) -> int:
    """How many characters `root`'s aliases add once expanded: its size with every alias replaced by what it names,
    less its size as written (each node once). A node that contains an alias to itself is an AliasError."""
    sizes, open_nodes = {}, set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)][1]
        if id(node) in open_nodes:
            raise AliasError(
                "an alias (*name) is inside the value it names, which would never end. Write the value out"
            )
        open_nodes.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            total = len(node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        else:
            total = 1 + sum(size(key) + size(value) for key, value in node.value)
        open_nodes.discard(id(node))
        sizes[id(node)] = node, total
        return total

    expanded = size(root)
    written = sum(len(node.value) if isinstance(node, yaml.ScalarNode) else 1 for node, _ in sizes.values())
    return expanded - written


def _read_config(path: str, parser: TrlParser) -> dict:
    """The settings of a --config YAML file, as TrlParser reads them (its `env:` mapping set as environment
    variables), with every key checked against the parser's fields, every value against its field's type and every
    choice against its choices."""
    try:
        with open(path, encoding="utf-8") as file:  # YAML's messages then name the file
            config = yaml.load(file, Loader=ConfigLoader)
    except FileNotFoundError as error:
        raise errors.ArgumentError(f"--config {path}: no such file. Pass the path of a YAML file.") from error
    except (OSError, UnicodeDecodeError) as error:
        raise errors.ArgumentError(f"--config {path} could not be read ({error}).") from error
    except DuplicateKeyError as error:
        raise errors.ArgumentError(
            f"--config {path} gives the key {errors.shown(error.key)} twice, on lines {error.lines[0]} and "
            f"{error.lines[1]}: YAML allows a key once in a mapping. Keep the one you mean."
        ) from error
    except AliasError as error:
        raise errors.ArgumentError(f"--config {path}: {error}.") from error
    except yaml.YAMLError as error:
        raise errors.ArgumentError(f"--config {path} is not valid YAML: {' '.join(str(error).split())}") from error
    except RecursionError as error:
        raise errors.ArgumentError(f"--config {path} nests its values too deeply to read.") from error
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise errors.ArgumentError(
            f"--config {path} must be a YAML mapping of settings to values, like `learning_rate: 1.0e-5`; it holds "
            f"a {type(config).__name__}."
        )
    env = config.pop("env", {})
    _check_env(path, env)
    actions = {}
    for action in parser._actions:  # the field's own action first: a bool field may also have a --no_ flag
        if action.option_strings:
            actions.setdefault(action.dest, action)
    # A flag's alias (its field's metadata "aliases": eval_ppo.py's --model_path) is a key as the flag is.
    aliases = {
        alias.removeprefix("--"): f.name
        for dataclass_type in parser.dataclass_types
        for f in dataclasses.fields(dataclass_type)
        for alias in f.metadata.get("aliases", ())
    }
    config = {aliases.get(key, key): value for key, value in config.items()}
    unknown = [key for key in config if key not in actions]
    if unknown:
        raise errors.ArgumentError(
            f"--config {path}: {_unknown(unknown, list(actions), 'key')} The keys are the flags' names without --."
        )
    for key, value in config.items():
        # `key:` or `key: null`, which no flag can give either; unset only where the field takes None and None means
        # this script's default
        if value is None and (
            not _accepts_none(parser, key) or key in NULL_NOT_DEFAULT and actions[key].default is not None
        ):
            raise errors.ArgumentError(
                f"--config {path}: {key} is empty (null), and --{key} needs a value. Give it one, or remove the key "
                "to keep the default."
            )
        config[key] = value = _typed_value(path, key, value, actions[key], _field_kinds(parser, key))
        # A number or bool is converted by the field's type as if given on the command line, so that `2.5` for an
        # integer is refused as `--per_device_train_batch_size 2.5` is; argparse checks no choice in a default.
        if isinstance(value, int | float) and actions[key].type is not None:
            config[key] = value = str(value)
        if actions[key].choices is not None and isinstance(value, str):
            value = actions[key].type(value) if actions[key].type else value
            if value not in actions[key].choices:
                raise errors.ArgumentError(
                    f"--config {path}: {key} {errors.shown(value)} is not one of "
                    f"{errors.join_names([str(c) for c in actions[key].choices])}."
                )
    os.environ.update({key: str(value) for key, value in env.items()})
    return config


def _check_env(path: str, env) -> None:
    """A --config's `env:` is a mapping of environment variables' names (ENV_NAME) to single values, which the
    operating system can hold (no NUL character)."""
    if not isinstance(env, dict):
        raise errors.ArgumentError(f"--config {path}: env must be a mapping of environment variables to values.")
    for name, value in env.items():
        if not (isinstance(name, str) and ENV_NAME.fullmatch(name)):
            raise errors.ArgumentError(
                f"--config {path}: env {errors.shown(name)} is not an environment variable's name: letters, digits "
                "and _, not starting with a digit."
            )
        if not isinstance(value, SCALARS) or "\0" in str(value):
            raise errors.ArgumentError(
                f"--config {path}: env {name} is {errors.shown(value)}; an environment variable takes one value, "
                "text or a number, without NUL characters."
            )


def _field_kinds(parser: TrlParser, name: str) -> set:
    """The kinds of value field `name`'s type takes: its type, or each member of a union, without its parameters
    (`dict[str, Any] | str | None` -> {dict, str, NoneType}); empty for a name no dataclass has."""
    for dataclass_type in parser.dataclass_types:
        hints = get_type_hints(dataclass_type)
        if name in hints:
            hint = hints[name]
            members = get_args(hint) if get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
            return {get_origin(member) or member for member in members}
    return set()


def _typed_value(path: str, key: str, value, action, kinds: set):
    """`value` of --config key `key` checked against what its field takes (`kinds`, _field_kinds'): a list only for a
    list field, of single values (text, when the field takes text: YAML's numbers and bools as written on the command
    line), a mapping only for a mapping field (model_init_kwargs, ...), else one value; a list field's single value
    as a list of one, as the flag makes it. YAML's other types (a date, binary) are refused: quoted, they are text."""
    if value is None or not kinds:
        return value
    if isinstance(value, dict):
        if dict in kinds:
            return value
        what = "a mapping"
    elif isinstance(value, list):
        if list in kinds:
            for item in value:
                if not isinstance(item, SCALARS):
                    raise errors.ArgumentError(
                        f"--config {path}: {key} holds {errors.shown(item)}, and --{key} takes a list of single "
                        "values (text or numbers)."
                    )
            return [str(item) for item in value] if action.type is str else value
        what = "a list"
    elif isinstance(value, SCALARS):
        return [value] if list in kinds and str not in kinds and action.nargs in ("+", "*") else value
    else:
        what = f"a YAML {type(value).__name__}"
    takes = "a list of single values" if list in kinds else "one value"
    raise errors.ArgumentError(
        f"--config {path}: {key} is {what}, {errors.shown(value)}, and --{key} takes {takes}. Write it as the flag "
        "takes it, in quotes if it is text that holds [ ] { } : or #."
    )


# Fields whose type takes None where the libraries do not read None as the script's default: TrainingArguments saves
# to trainer_output for an output_dir of None (not checkpoint/<stage>) and refuses a report_to of None.
NULL_NOT_DEFAULT = ("output_dir", "report_to")


def _accepts_none(parser: TrlParser, name: str) -> bool:
    """Whether field `name` of the parser's dataclasses may be None (its type is Optional, `X | None`)."""
    for dataclass_type in parser.dataclass_types:
        hints = get_type_hints(dataclass_type)
        if name in hints:
            return type(None) in get_args(hints[name])
    return True


def _namespace(parser: TrlParser, args: list[str], config: dict | None = None) -> dict:
    """The parsed flags, by field name, with `config`'s values as defaults; unknown flags refused."""
    parser.set_defaults_with_config(**(config or {}))
    namespace, unknown = parser.parse_known_args(args)
    if unknown:
        flags = [arg.split("=")[0] for arg in unknown if arg.startswith("-")]
        if not flags:
            raise errors.ArgumentError(
                f"unexpected {errors.join_names([errors.shown(arg) for arg in unknown])}: every setting is a flag "
                f"with its value (--<name> <value>). {HELP_HINT}"
            )
        # Each flag by its first spelling: --kl_coef, not also its alias --kl-coef.
        options = {option: action.option_strings[0] for option, action in parser._option_string_actions.items()}
        raise errors.ArgumentError(f"{_unknown(flags, options, 'flag')} {HELP_HINT}")
    return vars(namespace)


def _unknown(names: list[str], valid: dict[str, str] | list[str], kind: str) -> str:
    """ "unknown flag --kl_coeff (did you mean --kl_coef?).", with the nearest valid names (difflib); `valid` may map
    each spelling to the name to suggest."""
    canonical = valid if isinstance(valid, dict) else {name: name for name in valid}
    parts = []
    for name in names:
        if not (isinstance(name, str) and name.isprintable() and len(name) <= errors.MAX_SHOWN):  # YAML: any key
            parts.append(errors.shown(name))
            continue
        near = list(dict.fromkeys(canonical[match] for match in difflib.get_close_matches(name, canonical, n=5)))[:3]
        parts.append(f"{name} (did you mean {' or '.join(near)}?)" if near else name)
    return f"unknown {kind}{'s' if len(names) > 1 else ''} {errors.join_names(parts)}."


@dataclass
class StageArguments:
    """The flags every training stage shares; each script's ScriptArguments adds its own."""

    tiny: bool = field(
        default=False,
        metadata={
            "help": "Offline tiny preset: a tiny Qwen2 model built locally, the bundled data, CPU-sized settings."
        },
    )
    dataset_name: str = field(
        default=paths.DEFAULT_DATASET,
        metadata={"help": "Dataset id on the hub, or a local .jsonl/.json/.csv/.parquet file or folder."},
    )
    model_source: paths.ModelSource = field(
        default="modelscope",
        metadata={"help": "Where to fetch a model or dataset that is not a local path; tiny builds the tiny model."},
    )
    system_prompt: str = field(
        default=paths.DEFAULT_SYSTEM_PROMPT,
        metadata={"help": "System prompt for rows whose `system` column is empty or missing."},
    )
    resume_resets_state: bool = field(
        default=False,
        metadata={
            "help": "With --resume_from_checkpoint: resume from a checkpoint whose optimizer, learning-rate schedule, "
            "random state or step count is missing or damaged, starting that afresh (said at the start); without "
            "it such a resume is refused, as it would not continue the run it was saved by."
        },
    )
    eval_fraction: float = field(
        default=paths.DEFAULT_EVAL_FRACTION,
        metadata={
            "help": "Fraction of the rows held out from every stage (SFT, reward model, PPO, the tiny base), chosen "
            "by a hash of the question (common.split_held_out), so every stage holds out the same rows; saved as "
            "held_out.jsonl beside the model. 0.1: 35 questions of the bundled 345-row sample, enough to read "
            "base vs SFT vs PPO, while every other row trains (the sample is small); thousands on real data. The "
            "same value in every stage, or train_ppo.py refuses. 0 holds none out (SFT, reward model).",
            "range": "[0, 1)",
        },
    )
