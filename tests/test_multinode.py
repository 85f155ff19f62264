"""A train job over several SLURM nodes (set-resources train: {nodes: N, gres: "gpu:G"}).

Fast: the command lines, read by the real packages: snakemake-executor-plugin-slurm's sbatch call and
its jobstep's srun call for such a job, and nashflow's per-node launcher fed to accelerate's own
parser. Slow: a real two-node SLURM on this machine (scripts/slurm_single_node.sh: two slurmd, node1
and node2) runs the tiny DAG's train job through the shipped profile and the real plugin over both
nodes (CPU processes over gloo), and a probe job with the fake GPUs shows each node's launcher its
rank, the rendezvous and its node's GPUs. Outside SLURM the same job fails with one line."""

import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO, SLURM_FAST, snakemake, tiny_config, write_config

from nashflow.errors import NashflowError
from nashflow.launch import multinode_command, train_gpus


class Resources(dict):
    """Snakemake's job resources as the plugins read them (``.get`` and attributes)."""

    __getattr__ = dict.get


def plugin_calls(resources: dict, threads: int = 16) -> tuple[str, str]:
    """The real plugin's sbatch call and its jobstep's srun prefix for a job with ``resources``."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting, get_gpu_setting, get_node_setting

    job = SimpleNamespace(resources=Resources(resources), threads=threads, name="train")
    params = {"run_uuid": "u", "slurm_logfile": "l.log", "comment_str": "rule_train", "account": "",
              "partition": "-p gpu", "workdir": "/w"}
    sbatch = get_submit_command(job, params) + set_gres_string(job)
    srun = " ".join(["srun -n1 --cpu-bind=q", get_cpu_setting(job, False), get_gpu_setting(job), get_node_setting(job)])
    return sbatch, srun


def test_the_plugin_gives_a_multinode_job_gres_per_node_and_runs_it_as_a_one_node_step():
    sbatch, srun = plugin_calls({"nodes": 2, "gres": "gpu:8", "gpu": 0, "mem_mb": 480000, "runtime": 1440})
    assert "--nodes=2" in sbatch and "--gres=gpu:8" in sbatch and "--gpus" not in sbatch
    # the job's own step: one task, so one node (SLURM: "can't run 1 processes on 2 nodes")
    assert srun.startswith("srun -n1") and "--nodes=2" in srun and "--gpus" not in srun
    # with gpu: 8 the plugin asks for 8 GPUs in all (--gpus is per job): the reason for gres
    sbatch, srun = plugin_calls({"nodes": 2, "gpu": 8})
    assert "--gpus=8" in sbatch and "--gpus=8" in srun


def test_train_gpus_per_node_and_the_check_outside_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert train_gpus({"gpu": 2}) == 2 and train_gpus({"gpu": 0}) == 0
    assert train_gpus({"gres": "gpu:8"}) == 8 and train_gpus({"gres": "gpu:a100:4"}) == 4
    assert train_gpus({"gres": "gpu"}) == 1 and train_gpus({"gres": "gpu:a100"}) == 1
    with pytest.raises(NashflowError, match=r"over 2 nodes needs a SLURM allocation of 2 nodes \(no SLURM"):
        train_gpus({"nodes": 2, "gres": "gpu:8"})
    with pytest.raises(NashflowError, match="gres: gpu:8"):
        train_gpus({"nodes": 2, "gpu": 8})


def launcher(cmd: list[str], node_id: int) -> list[str]:
    """The ``accelerate launch`` arguments node ``node_id`` runs (after bash expands $SLURM_NODEID)."""
    inner = cmd[-1]
    assert cmd[-3:-1] == ["bash", "-c"]
    args = shlex.split(inner.split("exec ", 1)[1].replace('"$SLURM_NODEID"', str(node_id)))
    assert args[1:3] == ["-m", "accelerate.commands.launch"]
    return args[3:]


@pytest.mark.parametrize("config, kind", [("zero3", "use_deepspeed"), ("fsdp", "use_fsdp"), ("ddp", "multi_gpu"),
                                          (None, "multi_gpu")])
def test_one_launcher_per_node_with_its_rank_and_the_rendezvous(monkeypatch, config, kind):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    # inside the job's step: SLURM_* describe that one-node step, not the allocation
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu-a")
    monkeypatch.setenv("SLURM_NNODES", "1")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "32")
    cfg = str(REPO / "config" / "accelerate" / f"{config}.yaml") if config else None
    cmd = multinode_command(["gpu-a", "gpu-b"], 8, "/shared/spec.json", cfg, port=29542, main_address="10.0.0.7")
    srun = cmd[cmd.index("srun"):cmd.index("bash")]
    assert srun == ["srun", "--overlap", "--nodes", "2", "--ntasks", "2", "--ntasks-per-node", "1",
                    "--cpus-per-task=32", "--kill-on-bad-exit=1"]
    assert "--unset=SLURM_JOB_NODELIST" in cmd and "--unset=SLURM_NNODES" in cmd
    assert "--unset=SLURM_JOB_ID" not in cmd
    for node in (0, 1):
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(launcher(cmd, node)))
        assert (args.num_machines, args.num_processes, int(args.machine_rank)) == (2, 16, node)
        assert (args.main_process_ip, args.main_process_port, args.rdzv_backend) == ("10.0.0.7", 29542, "static")
        assert getattr(args, kind) and args.same_network
        assert args.training_script == "nashflow.training" and args.training_script_args == ["--spec", "/shared/spec.json"]
        if config == "zero3":
            assert args.deepspeed_multinode_launcher == "standard"  # torchrun per node, never pdsh


# ---------------------------------------------------------------- a real two-node SLURM (slow)

PROBE = '''
import os

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
total = torch.tensor([1.0])
dist.all_reduce(total)
print(f"probe rank={dist.get_rank()} world={dist.get_world_size()} total={total.item():.0f} "
      f"local_rank={os.environ['LOCAL_RANK']} node_rank={os.environ['GROUP_RANK']} "
      f"master={os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
      f"node={os.environ['SLURMD_NODENAME']} gpus={os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
dist.destroy_process_group()
'''

# One rule, the fake GPUs as the profile would give them: nashflow's launcher for 2 nodes x 2 GPUs,
# with a probe module in place of the trainer (which would need real GPUs).
PROBE_SNAKEFILE = '''
import os
import subprocess

from nashflow import launch


rule probe:
    output:
        "probe.txt",
    threads: 1
    resources:
        nodes=2,
        gres="gpu:2",
        slurm_partition="multi",
        mem_mb=1000,
        runtime=10,
    run:
        hosts = launch.allocation_hosts()
        cmd = launch.multinode_command(hosts, launch.train_gpus(resources), "unused.json",
                                       port=29500 + int(os.environ["SLURM_JOB_ID"]) % 2000,
                                       main_address=launch.node_address(hosts[0]))
        cmd[-1] = cmd[-1].replace("nashflow.training --spec unused.json", "probe")
        with open(output[0], "w") as out:
            subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True,
                           env={**os.environ, "PYTHONPATH": os.getcwd()})
'''

def _probe_through_slurm(wd: Path, result: dict) -> None:
    (wd / "Snakefile").write_text(PROBE_SNAKEFILE)
    (wd / "probe.py").write_text(PROBE)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(wd / "Snakefile"), "--directory", str(wd),
           "--profile", str(REPO / "profiles" / "slurm"), *SLURM_FAST]
    result["probe"] = subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_over_two_slurm_nodes_and_not_outside_slurm(slurm, tmp_path, tiny_model_dir):
    wd, probe_wd = tmp_path / "train", tmp_path / "probe"
    probe_wd.mkdir()
    cfg = tiny_config(tiny_model_dir, iterations=1, shards=1)
    write_config(wd, cfg)
    model = "results/tiny/iter1/model"
    snakemake(wd, "--cores", "2", model, "--omit-from", "train")  # the train job's inputs, locally

    # outside SLURM: one line, and nothing written
    proc = snakemake(wd, "--cores", "2", model, "--set-resources", "train:nodes=2", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("nashflow: error:")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-3000:]
    assert "a train job over 2 nodes needs a SLURM allocation of 2 nodes (no SLURM allocation)" in lines[0]
    assert not (wd / model).exists() and not (wd / "results" / "tiny" / "iter1" / "train_metrics.csv").exists()

    # through SLURM with the shipped profile: the train job on node1 + node2, and the GPU probe beside it
    result: dict = {}
    probe = threading.Thread(target=_probe_through_slurm, args=(probe_wd, result))
    probe.start()
    proc = snakemake(wd, "--profile", str(REPO / "profiles" / "slurm"), model, *SLURM_FAST,
                     "--set-resources", "train:nodes=2", "train:tasks=2", "train:gpu=0", "train:mem_mb=1500",
                     "train:slurm_partition=multi", "--set-threads", "train=1", timeout=600, check=False)
    probe.join()
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    job = re.findall(r"SLURM jobid (\d+)", text)[-1]
    info = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    assert "NumNodes=2 " in info and "NodeList=node[1-2]" in info, info
    log = (wd / "logs" / "tiny" / "iter1" / "train.log").read_text()
    port = 29500 + int(job) % 2000
    for node in (0, 1):
        assert f"nashflow: node {node} of 2 (node{node + 1} on " in log and f"rendezvous 127.0.0.1:{port}" in log, log
    assert "on 2 process(es)" in log, log  # one trainer process per node, in one process group
    assert (wd / model / "model.safetensors").exists()
    assert not list((wd / "logs").rglob("tmp*.json"))  # the shared spec file is gone

    out = result["probe"]
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]
    lines = sorted(re.findall(r"probe rank=.*", (probe_wd / "probe.txt").read_text()))
    assert len(lines) == 4, lines  # 2 nodes x 2 GPUs: one process per GPU
    for rank, line in enumerate(lines):
        node = rank // 2
        assert f"rank={rank} world=4 total=4 local_rank={rank % 2} node_rank={node}" in line, line
        assert f"node=node{node + 1} gpus=0,1" in line and "master=127.0.0.1:" in line, line
