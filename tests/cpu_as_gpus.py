"""Run a pipeline script under real FSDP2 or DeepSpeed ZeRO on CPU processes that talk over gloo: the tests' stand-in
for GPUs, started in place of the script by `accelerate launch`:

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 --mixed_precision no \
        tests/cpu_as_gpus.py train_sft.py --tiny ...

accelerate 1.15 cannot start FSDP or DeepSpeed on a machine without a GPU, whatever its config or environment says
(accelerate/state.py: PartialState._prepare_backend and AcceleratorState.__init__):
- with ACCELERATE_USE_CPU (what `--cpu` and the DDP tests set) the run is MULTI_CPU, that is plain DDP: FSDP's plugin
  and DeepSpeed's are dropped without a word;
- without it, no backend is found: FSDP becomes NO (each process trains alone, as process 0 of 1, and writes the same
  outputs), and DeepSpeed becomes DEEPSPEED with num_processes 1 on every process while DeepSpeed's own process group
  counts 2 (its batch size check fails).
Only the accelerator types (MULTI_GPU, MULTI_XPU, ...) lead to FSDP and a multi-process DeepSpeed. PyTorch's FSDP2
(fully_shard) and DeepSpeed's CPU accelerator (DS_ACCELERATOR=cpu, gloo when oneCCL is not installed) both run on CPU
tensors over gloo. So this file makes accelerate take the processes for GPUs that talk over gloo
(PartialState._prepare_backend answers ("gloo", MULTI_GPU)) on the CPU device (ACCELERATE_TORCH_DEVICE, which
PartialState.set_device keeps), and changes nothing else: the script, the Trainer, the FSDP and DeepSpeed plugins,
fully_shard and deepspeed.initialize run as they would on GPUs.

Each process also writes one line on stderr for each model it shards (REPORT, in one write), for the tests to check
that the run sharded what the config says.
"""

import os
import runpy
import sys
from pathlib import Path

import accelerate.accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType

REPORT = "cpu_as_gpus: process {rank} of {processes} under {how}: {what}"


def gloo_as_multi_gpu(self, cpu: bool = False, sagemaker_dp=False, backend: str | None = None):
    return "gloo", DistributedType.MULTI_GPU


def report(how: str, what: str) -> None:
    """REPORT on stderr in one write of the whole line: the processes share one stderr, and a print writes the line
    and its end in two, between which another process's progress bar or report can land (the tests' pattern then
    runs one report into the next and finds one line where there are two). A pipe keeps a write of at most PIPE_BUF
    bytes (4096 on Linux) whole."""
    state = PartialState()
    line = REPORT.format(rank=state.process_index, processes=state.num_processes, how=how, what=what)
    sys.stderr.flush()  # what this process wrote before goes first
    os.write(sys.stderr.fileno(), f"{line}\n".encode())


def reporting_fsdp2(fsdp2_prepare_model):
    def prepare(accelerator, model):
        from torch.distributed.tensor import DTensor

        model = fsdp2_prepare_model(accelerator, model)
        parameters = list(model.parameters())
        shards = [parameter for parameter in parameters if isinstance(parameter, DTensor)]
        local, total = sum(p.to_local().numel() for p in shards), sum(p.numel() for p in shards)
        report(
            "FSDP2",
            f"{type(model).__name__}: {len(shards)} of {len(parameters)} parameters are DTensors, holding {local} "
            f"of their {total} values here",
        )
        return model

    return prepare


def reporting_deepspeed(initialize):
    def wrapped(*args, **kwargs):
        engine, optimizer, *rest = initialize(*args, **kwargs)
        stage = engine.zero_optimization_stage()
        parameters = list(engine.module.parameters())
        if stage == 3:  # each parameter an empty placeholder, its values in ds_tensor shards
            local, total = sum(p.ds_tensor.numel() for p in parameters), sum(p.ds_numel for p in parameters)
            held = f"parameters partitioned, holding {local} of their {total} values here"
        else:  # the weights whole on every process, the fp32 optimizer state in partitions
            local = sum(group.numel() for group in getattr(optimizer, "single_partition_of_fp32_groups", []))
            total = sum(p.numel() for p in parameters if p.requires_grad)
            held = f"optimizer state partitioned, holding {local} of the {total} trained values here"
        report(f"DeepSpeed ZeRO-{stage}", f"{type(engine.module).__name__}, {type(optimizer).__name__}: {held}")
        return (engine, optimizer, *rest)

    return wrapped


if __name__ == "__main__":
    if int(os.environ.get("LOCAL_RANK", -1)) == -1:
        sys.exit("tests/cpu_as_gpus.py runs under accelerate launch (or torchrun), which sets LOCAL_RANK.")
    if os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes"):
        sys.exit("tests/cpu_as_gpus.py: unset ACCELERATE_USE_CPU, which makes every distributed run plain DDP.")
    PartialState._prepare_backend = gloo_as_multi_gpu
    os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"
    accelerate.accelerator.fsdp2_prepare_model = reporting_fsdp2(accelerate.accelerator.fsdp2_prepare_model)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed

        deepspeed.initialize = reporting_deepspeed(deepspeed.initialize)
    script = Path(sys.argv[1]).resolve()
    sys.argv = sys.argv[1:]
    sys.path.insert(0, str(script.parent))  # as `python script.py` would: the repository's modules
    runpy.run_path(str(script), run_name="__main__")
