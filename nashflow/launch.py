"""Launch training through ``accelerate launch``: one process per GPU of the job (at least 1)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

from nashflow.errors import NashflowError

log = logging.getLogger(__name__)


def accelerate_command(n_gpus: int, spec_path: str, accelerate_config: str | None = None,
                       mixed_precision: str | None = None, cpu_processes: int = 1) -> list[str]:
    """The ``accelerate launch`` command line for one training job on one machine.

    Processes: one per GPU of the job (CPU: ``cpu_processes``, default 1). The accelerate config
    file (``training.distributed``) decides how several processes train (DDP, DeepSpeed ZeRO, FSDP)
    on any number of processes: no ``--multi_gpu`` flag overrides its ``distributed_type``. Mixed
    precision: ``mixed_precision`` when given (the workflow always gives it: ``compute.training_dtype``,
    see nashflow/precision.py; ``bf16`` on a CPU is autocast), else the config file's on GPUs and
    ``no`` on CPUs. A single CPU
    process runs plainly (``--cpu``, no config)."""
    procs = max(1, int(n_gpus)) if n_gpus > 0 else max(1, int(cpu_processes))
    with_config = bool(accelerate_config) and (n_gpus > 0 or procs > 1)
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if with_config:
        cmd += ["--config_file", str(accelerate_config)]
    cmd += ["--num_processes", str(procs), "--num_machines", "1", "--dynamo_backend", "no"]
    precision = mixed_precision or ("no" if n_gpus <= 0 else None)  # the yamls' bf16 is for GPUs
    if precision:
        cmd += ["--mixed_precision", precision]
    if not with_config:
        if procs > 1:
            cmd.append("--multi_gpu")  # DDP (over gloo for CPU processes)
        elif n_gpus <= 0:
            cmd.append("--cpu")
    cmd += ["-m", "nashflow.training", "--spec", spec_path]
    return cmd


def simple_launch_env(cmd: list[str]) -> dict[str, str] | None:
    """The environment accelerate's own launcher would give the trainer for ``cmd`` (an
    :func:`accelerate_command`) where it would run it as one plain process (its simple launcher:
    one process, one machine, no DeepSpeed, FSDP or multi-GPU, also after a default accelerate
    config file is read); None otherwise. Decided by accelerate's parser and validator, as
    ``accelerate launch`` decides."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import ComputeEnvironment
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    args = launch_command_parser().parse_args(cmd[cmd.index("accelerate.commands.launch") + 1:])
    args, defaults, _ = _validate_launch_command(args)
    special = (args.use_deepspeed or args.use_fsdp or args.use_megatron_lm or args.multi_gpu or args.tpu) \
        and not args.cpu
    sagemaker = defaults is not None and defaults.compute_environment == ComputeEnvironment.AMAZON_SAGEMAKER
    if special or sagemaker or args.num_processes != 1 or args.num_machines != 1 or args.mpirun_hostfile:
        return None
    return prepare_simple_launcher_cmd_env(args)[1]


@contextlib.contextmanager
def _environment(env: dict[str, str]):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def train_in_process(spec_path: str, env: dict[str, str]) -> None:
    """Run the trainer in this process under ``env`` (what accelerate's simple launcher would set),
    then drop accelerate's process-wide state, so that a later training in the process starts
    clean. Saves a job the launcher's and the trainer's interpreters and imports (~5 s each job)."""
    from accelerate.state import AcceleratorState

    from nashflow.training import run_spec

    try:
        with _environment(env):
            run_spec(spec_path)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def distributed_type(accelerate_config: str | None) -> str | None:
    """The ``distributed_type`` of an accelerate config file (None without one)."""
    if not accelerate_config:
        return None
    import yaml

    return (yaml.safe_load(Path(accelerate_config).read_text()) or {}).get("distributed_type")


def allocation_hosts() -> list[str]:
    """The nodes of this SLURM job's allocation, first one first ([] outside SLURM).

    Asked of the controller, not read from the environment: snakemake-executor-plugin-slurm-jobstep
    runs every job as a one-node step (``srun -n1 ... --nodes=N``) after dropping the batch script's
    SLURM_* variables, so inside a job SLURM_NNODES is 1 and SLURM_JOB_NODELIST names only the
    step's node, whatever the allocation."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return []
    return list(_allocation_hosts(job))


@functools.lru_cache(maxsize=4)
def _allocation_hosts(job: str) -> tuple[str, ...]:
    try:
        info = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=60)
        found = re.search(r"(?:^|\s)NodeList=(\S+)", info.stdout)
        if info.returncode != 0 or not found or found.group(1) == "(null)":
            raise NashflowError(f"SLURM job {job}: scontrol show job gave no node list "
                                f"({(info.stderr or info.stdout).strip()[:200]})")
        hosts = subprocess.run(["scontrol", "show", "hostnames", found.group(1)], capture_output=True, text=True,
                               timeout=60, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError) as err:
        raise NashflowError(f"SLURM job {job}: cannot read its nodes with scontrol ({err})") from None
    return tuple(hosts)


def node_address(node: str) -> str:
    """The address SLURM reaches ``node`` at (its NodeAddr; the node name where that is unset)."""
    info = subprocess.run(["scontrol", "show", "node", "-o", node], capture_output=True, text=True, timeout=60)
    found = re.search(r"(?:^|\s)NodeAddr=(\S+)", info.stdout)
    return found.group(1) if info.returncode == 0 and found else node


def train_gpus(resources: Mapping[str, Any]) -> int:
    """GPUs per node of a train job, from its resources: ``gpu``, or ``gres: gpu[:type]:N`` (per node).

    A job over several nodes (``nodes: N``) must give its GPUs as ``gres``: snakemake-executor-plugin-
    slurm turns ``gpu`` into a total for the job (sbatch --gpus), which its one-node step then cannot
    start with. It must also run in a SLURM allocation of N nodes (``--profile slurm``): elsewhere it
    fails here, before anything is written."""
    nodes = int(resources.get("nodes") or 1)
    gpu = int(resources.get("gpu") or 0)
    gres = str(resources.get("gres") or "").split(":")  # gpu, gpu:N or gpu:type:N
    per_node = (int(gres[-1]) if len(gres) > 1 and gres[-1].isdigit() else 1) if gres[0] == "gpu" else 0
    if nodes > 1:
        if gpu > 0:
            raise NashflowError(f"a train job over {nodes} nodes takes its GPUs per node as gres: gpu:N, not gpu: "
                                f"{gpu} (set gpu: 0 and gres: gpu:{gpu} in the profile's set-resources)")
        hosts = allocation_hosts()
        if len(hosts) < nodes:
            # a job without GPUs also needs tasks: N (the plugin's sbatch --ntasks=1 shrinks it to one node)
            where = (f"SLURM job {os.environ['SLURM_JOB_ID']} has {len(hosts)}; without GPUs set tasks: {nodes} too"
                     if hosts else "no SLURM allocation")
            raise NashflowError(f"a train job over {nodes} nodes needs a SLURM allocation of {nodes} nodes "
                                f"({where}): run it with --profile slurm, or set nodes: 1")
    return gpu if gpu > 0 else per_node


def multinode_command(hosts: list[str], gpus_per_node: int, spec_path: str, accelerate_config: str | None = None,
                      mixed_precision: str | None = None, port: int = 29500, main_address: str | None = None,
                      cpu_processes: int = 1) -> list[str]:
    """One train job over the nodes ``hosts`` of its SLURM allocation: an ``srun`` step with one task
    per node, each running ``accelerate launch`` (the same command as on one node, by
    :func:`accelerate_command`) with ``--num_machines``, its ``--machine_rank`` ($SLURM_NODEID), and
    a static rendezvous at the first node (``main_address``, default its name). CPU nodes
    (``gpus_per_node`` 0) run ``cpu_processes`` each, over gloo.

    The step runs from inside the job's own step (the jobstep plugin's ``srun -n1``), which holds the
    first node's CPUs, memory and GPUs: ``--overlap`` lets the new step share them (without it,
    SLURM 22.05 waits for them forever); it gets each node's GPUs of the job (``gres``) by default."""
    nodes = len(hosts)
    per_node = gpus_per_node if gpus_per_node > 0 else max(1, int(cpu_processes))
    launch = accelerate_command(nodes * gpus_per_node, spec_path, accelerate_config, mixed_precision,
                                cpu_processes=nodes * per_node)
    launch[launch.index("--num_machines") + 1] = str(nodes)
    module_at = len(launch) - 1 - launch[::-1].index("-m")  # options go before the trainer module
    head, tail = launch[:module_at], launch[module_at:]
    head += ["--main_process_ip", main_address or hosts[0], "--main_process_port", str(port),
             "--rdzv_backend", "static", "--same_network"]
    cpu_env = ("export ACCELERATE_USE_CPU=true; "
               if gpus_per_node <= 0 and distributed_type(accelerate_config) != "DEEPSPEED" else "")
    inner = (f'echo "nashflow: node $SLURM_NODEID of {nodes} ($SLURMD_NODENAME on $(hostname)):'
             f' CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES-}}, rendezvous {main_address or hosts[0]}:{port}"; '
             f'{cpu_env}exec {shlex.join(head)} --machine_rank "$SLURM_NODEID" {shlex.join(tail)}')
    # the job's step describes itself, not the allocation, in SLURM_* (SLURM_JOB_NODELIST names one node:
    # "srun: error: Only allocated 1 nodes asked for 2"): as the jobstep plugin does for its own srun,
    # keep only the job's identity, and give the CPUs per task explicitly
    inherited = sorted(v for v in os.environ if v.startswith(("SLURM_", "SRUN_", "SBATCH_")) and v not in _KEEP_SLURM)
    cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    return ["env", *(f"--unset={v}" for v in inherited), "srun", "--overlap", "--nodes", str(nodes),
            "--ntasks", str(nodes), "--ntasks-per-node", "1", *([f"--cpus-per-task={cpus}"] if cpus else []),
            "--kill-on-bad-exit=1", "bash", "-c", inner]


_KEEP_SLURM = {"SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CONF", "SLURM_CLUSTER_NAME", "SLURM_SUBMIT_DIR",
               "SLURM_SUBMIT_HOST", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"}


def _visible_devices_settable(env: dict[str, str]) -> bool:
    """False where ``env`` would change CUDA_VISIBLE_DEVICES after CUDA started in this process."""
    if env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES"):
        return True
    torch = sys.modules.get("torch")
    return not (torch is not None and torch.cuda.is_initialized())


def die_with_parent() -> None:
    """Linux: the trainer gets SIGKILL when the job process dies (a killed job leaves no orphan
    that would go on writing its outputs)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def launch_training(spec: dict[str, Any], *, n_gpus: int, log_path: str | None = None,
                    accelerate_config: str | None = None, mixed_precision: str | None = None,
                    cpu_processes: int = 1) -> None:
    """Write ``spec`` to a temporary JSON file and run the trainer under accelerate."""
    try:  # several: a train job over several SLURM nodes (set-resources train: {nodes: N}; see train_gpus)
        hosts = allocation_hosts()
    except NashflowError as err:  # a one-node job does not need to know; train_gpus stopped a multi-node one
        log.warning("%s; training on this node", err)
        hosts = []
    # every node reads the spec: beside the log (a shared file system), not in this node's /tmp
    shared = (Path(log_path).parent if log_path else Path.cwd()) if len(hosts) > 1 else None
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, dir=shared) as fh:
        json.dump(spec, fh)
        spec_path = fh.name
    if len(hosts) > 1:  # n_gpus is per node; the port depends on the job, so that jobs sharing a node differ
        cmd = multinode_command(hosts, n_gpus, spec_path, accelerate_config, mixed_precision,
                                port=29500 + int(os.environ["SLURM_JOB_ID"]) % 2000,
                                main_address=node_address(hosts[0]), cpu_processes=cpu_processes)
    else:
        cmd = accelerate_command(n_gpus, spec_path, accelerate_config, mixed_precision, cpu_processes)
        plain = simple_launch_env(cmd)
        if plain is not None and _visible_devices_settable(plain):
            log.info("training in this process, as accelerate's simple launcher would run: %s", " ".join(cmd))
            try:
                train_in_process(spec_path, plain)
            finally:
                Path(spec_path).unlink(missing_ok=True)
            return
    log.info("running: %s", " ".join(cmd))
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if n_gpus <= 0 and cpu_processes > 1 and distributed_type(accelerate_config) != "DEEPSPEED":
        # the processes join one group over gloo (accelerate's MULTI_CPU; the trainer turns FSDP on
        # over it); DeepSpeed picks its CPU accelerator and gloo itself
        env["ACCELERATE_USE_CPU"] = "true"
    try:
        out = open(log_path, "a") if log_path else None
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, env=env,
                                  preexec_fn=die_with_parent)
        finally:
            if out:
                out.close()
    finally:
        Path(spec_path).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise NashflowError(f"training failed (exit {proc.returncode}); see {log_path or 'the output above'}")
