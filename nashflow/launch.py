"""Launch training through ``accelerate launch``: one process per GPU of the job (at least 1)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from nashflow.errors import NashflowError

log = logging.getLogger(__name__)


def accelerate_command(n_gpus: int, spec_path: str, accelerate_config: str | None = None,
                       mixed_precision: str = "no", cpu_processes: int = 1) -> list[str]:
    """The command line for one training job; processes = n_gpus (CPU: ``cpu_processes``, default 1).

    Several CPU processes (DDP over gloo, for tests and CPU clusters) start through torchrun, which
    accelerate's Accelerator picks up from the environment."""
    if n_gpus <= 0 and cpu_processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(cpu_processes),
                "-m", "nashflow.trainer", "--spec", spec_path]
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        cmd += ["--config_file", accelerate_config]
    procs = max(1, int(n_gpus))
    cmd += ["--num_processes", str(procs), "--num_machines", "1", "--dynamo_backend", "no",
            "--mixed_precision", mixed_precision if n_gpus > 0 else "no"]
    if n_gpus <= 0:
        cmd.append("--cpu")
    elif procs > 1:
        cmd.append("--multi_gpu")
    cmd += ["-m", "nashflow.trainer", "--spec", spec_path]
    return cmd


def multinode_command(nodes: int, gpus_per_node: int, spec_path: str, accelerate_config: str | None = None,
                      mixed_precision: str = "no", port: int = 29500) -> list[str]:
    """One train job over several SLURM nodes: ``srun`` starts one launcher per node, each with
    ``gpus_per_node`` processes; node 0 (first host of the allocation) is the rendezvous."""
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        launch += ["--config_file", accelerate_config]
    launch += ["--num_machines", str(nodes), "--num_processes", str(nodes * gpus_per_node),
               "--machine_rank", "$SLURM_NODEID", "--main_process_ip", "$MAIN_HOST", "--main_process_port", str(port),
               "--rdzv_backend", "static", "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
               "-m", "nashflow.trainer", "--spec", spec_path]
    inner = ('MAIN_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1); ' + " ".join(launch))
    return ["srun", "--nodes", str(nodes), "--ntasks-per-node", "1", "--kill-on-bad-exit=1", "bash", "-c", inner]


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
                    accelerate_config: str | None = None, mixed_precision: str = "no", cpu_processes: int = 1) -> None:
    """Write ``spec`` to a temporary JSON file and run the trainer under accelerate."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
        spec_path = fh.name
    nodes = int(os.environ.get("SLURM_NNODES", "1") or 1)
    if nodes > 1 and n_gpus > 0:  # a train job over several nodes (set-resources train: {nodes: N, ...})
        per_node = int(os.environ.get("SLURM_GPUS_ON_NODE") or max(1, n_gpus // nodes))
        cmd = multinode_command(nodes, per_node, spec_path, accelerate_config, mixed_precision)
    else:
        cmd = accelerate_command(n_gpus, spec_path, accelerate_config, mixed_precision, cpu_processes)
    log.info("running: %s", " ".join(cmd))
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if n_gpus <= 0 and cpu_processes > 1:
        env["ACCELERATE_USE_CPU"] = "true"  # the Accelerator then joins torchrun's group over gloo
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
