"""Which model a LoRA adapter was trained on: recorded beside it at every save, checked wherever it is applied.

peft's adapter_config.json names the base as it was passed to from_pretrained (`checkpoint/sft`), a path resolved
against whatever folder a later script runs in: a retrained SFT model, or another copy's, sits there just as well. So
every save of an adapter also writes paths.ADAPTER_BASE_FILE: the base's resolved path and a fingerprint of its
weights and config (`fingerprint`). Every script that applies or merges an adapter calls `check_base` first.

The record is a file of its own, not extra keys in adapter_config.json: peft's LoraConfig warns about keys it does not
know at every load, and writes the file again from its own fields at every save, which would drop them.
"""

import hashlib
import json
from pathlib import Path

from hfppo import checkpoints, errors, paths

ALLOW_FLAG = "--allow_other_base"  # the one flag of every script that applies an adapter: accept another base
ALLOW_HELP = (
    "Apply an adapter to the model its adapter_config.json names even where that is not the model it was trained on "
    f"(another fingerprint than its {paths.ADAPTER_BASE_FILE} records), saying so, instead of refusing."
)
# The fingerprint reads, of each weight file, SAMPLE_BLOCKS blocks of BLOCK_BYTES spread evenly over it (the whole
# file when it is smaller): 4 MiB and 64 reads of a 1 GB model, a fraction of a second, where hashing every byte takes
# seconds per adapter applied. Retraining changes nearly every weight, so it changes every block.
SAMPLE_BLOCKS = 64
BLOCK_BYTES = 64 * 1024
SAFETENSORS_LENGTH_BYTES = 8  # a safetensors file starts with its header's length, a little-endian u64
# What check_base has said already in this process, said once: a note or an accepted mismatch, by (adapter, base)
_said: set[tuple[str, str]] = set()


def weight_files(base: Path) -> list[Path]:
    """The base's weight files (checkpoints.CHECKPOINT_FILES' patterns), in name order."""
    return sorted({file for pattern in checkpoints.CHECKPOINT_FILES["weights"] for file in base.glob(pattern)})


def _file_digest(file: Path, digest) -> None:
    """Add to `digest` the file's name, its size, a safetensors file's whole header (every tensor's name, dtype, shape
    and offsets) and the sampled blocks of its bytes."""
    size = file.stat().st_size
    digest.update(f"{file.name}\0{size}\0".encode())
    with file.open("rb") as stream:
        if file.suffix == ".safetensors" and size >= SAFETENSORS_LENGTH_BYTES:
            length = int.from_bytes(stream.read(SAFETENSORS_LENGTH_BYTES), "little")
            digest.update(stream.read(min(length, size)))
        if size <= SAMPLE_BLOCKS * BLOCK_BYTES:
            stream.seek(0)
            digest.update(stream.read())
            return
        step = (size - BLOCK_BYTES) / (SAMPLE_BLOCKS - 1)  # the first block at 0, the last ending at the file's end
        for i in range(SAMPLE_BLOCKS):
            stream.seek(round(i * step))
            digest.update(stream.read(BLOCK_BYTES))


def fingerprint(base: str | Path) -> str:
    """A SHA-256 of the model folder `base`: its config.json's bytes and, of each weight file, its name, size,
    safetensors header and SAMPLE_BLOCKS sampled blocks. Cheap on a 1 GB model, and changed by retraining (new
    weights), another architecture or size (config, header), or another model altogether; the same for a copy of the
    folder elsewhere."""
    base = Path(base)
    digest = hashlib.sha256()
    for file in [base / "config.json", *weight_files(base)]:
        if file.is_file():
            _file_digest(file, digest)
    return digest.hexdigest()


def record_base(folder: str | Path) -> None:
    """Write paths.ADAPTER_BASE_FILE into `folder`, a save that holds an adapter (adapter_config.json): the resolved
    path and fingerprint of the model its adapter_config.json names, which the save's process trained it on. A folder
    without an adapter (a whole model's save), or whose base is no local folder, gets none."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        return
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    base = Path(config["base_model_name_or_path"]).resolve()
    if not base.is_dir():  # every stage trains on a local folder (common.resolve_model); a hub id has no files here
        return
    record = {"base_model_path": str(base), "fingerprint": fingerprint(base)}
    (folder / paths.ADAPTER_BASE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _say_once(adapter: Path, base: str | Path, line: str) -> None:
    key = (str(adapter.resolve()), str(Path(base).resolve()))
    if key not in _said:
        _said.add(key)
        print(line, flush=True)


def check_base(adapter: str | Path, base: str | Path, allow_other_base: bool, retrain: str) -> None:
    """Refuse to apply the adapter at `adapter` to the model at `base` unless it is the model the adapter was trained
    on (its paths.ADAPTER_BASE_FILE's fingerprint); `allow_other_base` (ALLOW_FLAG) accepts another, saying so in one
    line. An adapter saved before the record existed is applied with a one-line note. `retrain` is the command that
    trains the adapter again (on the model now at `base`)."""
    adapter = Path(adapter)
    record_file = adapter / paths.ADAPTER_BASE_FILE
    if not record_file.is_file():
        _say_once(
            adapter,
            base,
            f"note: {adapter} has no {paths.ADAPTER_BASE_FILE} (saved by an earlier version), so nothing checks that "
            f"{base} is the model it was trained on.",
        )
        return
    record = checkpoints.read_checkpoint_json(
        record_file, f"Write it again: {retrain}", ("base_model_path", "fingerprint")
    )
    if fingerprint(base) == record["fingerprint"]:
        return
    trained_on = record["base_model_path"]
    if allow_other_base:
        _say_once(
            adapter,
            base,
            f"{ALLOW_FLAG}: applying the adapter at {adapter} to {base}, which is not the model it was trained on "
            f"({trained_on}).",
        )
        return
    still_there = (
        f" That model is still at {trained_on}."
        if Path(trained_on).is_dir() and fingerprint(trained_on) == record["fingerprint"]
        else ""
    )
    raise errors.PipelineError(
        f"the adapter at {adapter} was trained on the model then at {trained_on}, and the model now at {base} is "
        f"another one: its weights or config differ from those {record_file} records. It was retrained or replaced "
        "since, or belongs to another copy of the project; applied to it, the adapter would give answers no run "
        f"trained or evaluated.{still_there} Put the model the adapter was trained on back at {base}, or train the "
        f"adapter again on this one: {retrain}. To apply it to this model anyway, add {ALLOW_FLAG}."
    )
