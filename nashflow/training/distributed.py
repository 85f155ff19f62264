"""accelerate, DeepSpeed and FSDP around the trainer: the accelerator, the fixes that let CPU
processes shard as the launcher asked, and the collective gathering of full weights."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from nashflow.settings import TrainConfig

log = logging.getLogger(__name__)


def make_accelerator(train_cfg: TrainConfig):
    """The accelerator for ``train_cfg``, with DeepSpeed's and CPU sharding's settings filled in."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    # The plugin, not an int: accelerate would read a DeepSpeed yaml's "auto" from the environment
    acc = Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=train_cfg.grad_accum))
    sharding_on_cpu(acc)
    configure_deepspeed(acc, train_cfg)
    return acc


def prepare_for_processes(acc, model, opt, sched):
    """(model, optimizer) wrapped by accelerate for the processes (DDP, DeepSpeed's engine, FSDP)."""
    # The scheduler is stepped by hand once per optimizer step (batches are sharded by hand), so it
    # is not prepared, only registered for the resumable state.
    model, opt = acc.prepare(model, opt)
    acc.register_for_checkpointing(sched)
    held, total = parameter_share(model)
    log.info("%s on %d process(es); this one holds %d of %d parameter values", acc.distributed_type.value,
             acc.num_processes, held, total)
    return model, opt


def is_deepspeed(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.DEEPSPEED


def plain_data_parallel(acc) -> bool:
    """Whether every process holds the whole model and optimizer (no DeepSpeed, no FSDP)."""
    from accelerate.utils import DistributedType

    return acc.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)


def sharding_on_cpu(acc) -> None:
    """Let CPU processes (our tests, CPU clusters) run DeepSpeed and FSDP as the launcher asked.

    accelerate 1.15 turns FSDP on only in its GPU branch, and under DeepSpeed on CPU it leaves its
    process count at 1 although DeepSpeed has joined all processes over gloo. Both are set here,
    right after ``Accelerator()`` and before ``prepare``; on GPUs this does nothing."""
    import os

    import torch.distributed as dist
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if acc.device.type != "cpu" or not dist.is_initialized() or dist.get_world_size() < 2:
        return
    states = (PartialState._shared_state, AcceleratorState._shared_state)  # AcceleratorState holds a copy
    if acc.distributed_type == DistributedType.DEEPSPEED and acc.num_processes != dist.get_world_size():
        for shared in states:
            shared.update(num_processes=dist.get_world_size(), process_index=dist.get_rank(),
                          local_process_index=int(os.environ.get("LOCAL_RANK", dist.get_rank())), backend="gloo")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and acc.distributed_type != DistributedType.FSDP:
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()
        for shared in states:
            shared["distributed_type"] = DistributedType.FSDP


def configure_deepspeed(acc, train_cfg: TrainConfig) -> None:
    """Fill what DeepSpeed cannot infer without a DataLoader: the micro-batch (pairs per process),
    gradient clipping from ``training.max_grad_norm`` and, for ZeRO-3, gathering full weights on save."""
    from accelerate.utils import DistributedType

    if acc.distributed_type != DistributedType.DEEPSPEED:
        return
    ds = acc.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = train_cfg.batch_size
    ds["gradient_clipping"] = float(train_cfg.max_grad_norm)
    zero = ds.setdefault("zero_optimization", {})
    if int(zero.get("stage", 0)) == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True


def shards_parameters(acc) -> bool:
    """Whether a rank holds only a shard of the weights (ZeRO-3, FSDP)."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP:
        return True
    if acc.distributed_type == DistributedType.DEEPSPEED:
        return int(acc.state.deepspeed_plugin.zero_stage) == 3
    return False


def parameter_share(model) -> tuple[int, int]:
    """(values this process holds, values of the full model): less than all under ZeRO-3 and FSDP."""
    held = total = 0
    for p in model.parameters():
        if hasattr(p, "ds_numel"):  # DeepSpeed ZeRO-3: the local partition is ds_tensor
            held, total = held + p.ds_tensor.numel(), total + p.ds_numel
        elif hasattr(p, "to_local"):  # FSDP2: a DTensor over the processes
            held, total = held + p.to_local().numel(), total + p.numel()
        else:
            held, total = held + p.numel(), total + p.numel()
    return held, total


def full_state_dict(acc, model) -> dict[str, torch.Tensor]:
    """The full-size weights on CPU, gathered collectively (every rank calls it; the main process gets
    them, the others may get an empty dict)."""
    sd = acc.get_state_dict(model)
    if not acc.is_main_process:
        return {}
    # tied weights (e.g. lm_head = embed_tokens) once, as save_pretrained writes them
    seen, tied = set(), set()
    for name, p in acc.unwrap_model(model).named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.add(id(p))
    return {k: v.detach().cpu().clone() for k, v in (sd or {}).items() if k not in tied}


def initial_weights(policy_path: str) -> dict[str, torch.Tensor]:
    """The initial policy's weights read from its safetensors files (no model load, no collective)."""
    from safetensors.torch import load_file

    sd: dict[str, torch.Tensor] = {}
    for f in sorted(Path(policy_path).glob("*.safetensors")):
        sd.update(load_file(f))
    return sd


def onednn_linears(acc, model, setting: str) -> str:
    """float32 linears through oneDNN (``compute.cpu_linear``, :mod:`nashflow.onednn`) where the
    policy trains unsharded on a CPU without mixed precision; elsewhere PyTorch's own. Returns which
    ("onednn" or "aten"), for the iterate's provenance."""
    from nashflow import onednn

    if acc.mixed_precision == "no" and not is_deepspeed(acc) and not shards_parameters(acc) and \
            onednn.applies(setting, acc.device, torch.float32):
        log.info("float32 linear layers through oneDNN: %d", onednn.use_onednn(model))
        return "onednn"
    return "aten"
