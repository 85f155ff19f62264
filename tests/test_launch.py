"""What ``accelerate launch`` will really do with our command lines: each one is fed to accelerate's
own parser and validator (``launch_command_parser``, ``_validate_launch_command``) and to the
environment builders its launchers use, so a flag that overrides the config file shows up here as
the wrong distributed type, not as a string that happens to be present."""

import pytest
from conftest import REPO

from nashflow.launch import accelerate_command

accelerate_launch = pytest.importorskip("accelerate.commands.launch")
launch_utils = pytest.importorskip("accelerate.utils.launch")

CONFIGS = {name: str(REPO / "config" / "accelerate" / f"{name}.yaml") for name in ("ddp", "zero2", "zero3", "fsdp")}


def what_accelerate_does(cmd: list[str]):
    """(validated args, the launcher's environment, the launcher's command or None) for our command line."""
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    args = accelerate_launch.launch_command_parser().parse_args(cmd[3:])
    args, defaults, mp_from_config = accelerate_launch._validate_launch_command(args)
    launched = None
    if args.use_deepspeed and not args.cpu:  # as accelerate.commands.launch.launch_command does
        fields = list(defaults.deepspeed_config.keys()) if defaults else []
        args.deepspeed_fields_from_accelerate_config = ",".join(fields + (["mixed_precision"] if mp_from_config else []))
        launched, env = launch_utils.prepare_deepspeed_cmd_env(args)
    elif (args.use_fsdp or args.multi_gpu) and not args.cpu:
        env = launch_utils.prepare_multi_gpu_env(args)
    else:
        launched, env = launch_utils.prepare_simple_launcher_cmd_env(args)
    return args, env, launched


@pytest.mark.parametrize("gpus", [1, 8])
@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_deepspeed_configs_launch_deepspeed_on_any_number_of_gpus(name, gpus):
    args, env, launched = what_accelerate_does(accelerate_command(gpus, "s.json", CONFIGS[name]))
    assert args.use_deepspeed and not args.multi_gpu and not args.use_fsdp
    assert args.num_processes == gpus and args.module and args.training_script == "nashflow.training"
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == name[-1]
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"  # the yaml's when the caller gives none
    assert launched is None and args.nproc_per_node == str(gpus)  # torchrun in accelerate's process: no pdsh
    if name == "zero3":
        assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
        assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"


@pytest.mark.parametrize("gpus", [1, 8])
def test_fsdp_config_launches_fsdp2(gpus):
    args, env, _ = what_accelerate_does(accelerate_command(gpus, "s.json", CONFIGS["fsdp"]))
    assert args.use_fsdp and not args.multi_gpu and not args.use_deepspeed and args.num_processes == gpus
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_ddp_config_and_no_config_launch_ddp():
    args, env, _ = what_accelerate_does(accelerate_command(8, "s.json", CONFIGS["ddp"]))
    assert args.multi_gpu and not args.use_deepspeed and not args.use_fsdp and args.num_processes == 8
    args, env, _ = what_accelerate_does(accelerate_command(8, "s.json", None))  # training.distributed: auto
    assert args.multi_gpu and args.num_processes == 8 and args.mixed_precision == "no"


@pytest.mark.parametrize("name", ["ddp", "zero3", "fsdp"])
def test_a_mixed_precision_the_user_set_wins_over_the_yaml(name):
    args, env, _ = what_accelerate_does(accelerate_command(8, "s.json", CONFIGS[name], mixed_precision="no"))
    assert args.mixed_precision == "no" and env["ACCELERATE_MIXED_PRECISION"] == "no"


def test_cpu_jobs_run_fp32_unless_bf16_is_asked_for():
    args, env, _ = what_accelerate_does(accelerate_command(0, "s.json", CONFIGS["zero3"]))
    assert args.cpu and not args.use_deepspeed and args.num_processes == 1 and args.mixed_precision == "no"
    # compute.training_dtype resolved to bfloat16 on a CPU with fast bf16: autocast on the CPU
    args, env, _ = what_accelerate_does(accelerate_command(0, "s.json", CONFIGS["zero3"], mixed_precision="bf16"))
    assert args.cpu and args.mixed_precision == "bf16" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    # several CPU processes (tests, CPU clusters) keep the config's distributed type, in fp32
    args, env, _ = what_accelerate_does(accelerate_command(0, "s.json", CONFIGS["zero3"], cpu_processes=2))
    assert args.use_deepspeed and args.num_processes == 2 and env["ACCELERATE_MIXED_PRECISION"] == "no"


def test_deepspeed_configs_never_start_pdsh_on_several_nodes():
    cmd = accelerate_command(8, "s.json", CONFIGS["zero3"])
    i = cmd.index("--num_machines")
    cmd[i + 1:i + 2] = ["2", "--machine_rank", "1", "--main_process_ip", "10.0.0.1", "--main_process_port", "29500"]
    cmd[cmd.index("--num_processes") + 1] = "16"
    args, env, launched = what_accelerate_does(cmd)
    assert args.deepspeed_multinode_launcher == "standard"
    assert launched is None  # not the `deepspeed` runner (pdsh/ssh): torchrun on this node
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 1)
    rendezvous = getattr(args, "rdzv_endpoint", None) or f"{args.master_addr}:{args.master_port}"
    assert rendezvous == "10.0.0.1:29500"


def test_shipped_accelerate_configs_parse():
    import yaml

    shipped = (REPO / "config" / "accelerate").glob("*.yaml")
    kinds = {p.stem: yaml.safe_load(p.read_text())["distributed_type"] for p in shipped}
    assert kinds == {"ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp": "FSDP"}


def _config(tmp_path, **training):
    import yaml

    from nashflow.config import validate_config

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg.setdefault("training", {}).update(training)
    return validate_config(cfg, REPO / "config" / "schema.yaml")


def test_bad_distributed_settings_fail_before_any_job_with_one_line(tmp_path, monkeypatch):
    from nashflow.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"training.distributed.*'zero4' is neither auto, a shipped") as err:
        _config(tmp_path, distributed="zero4")
    assert "\n" not in str(err.value)
    (tmp_path / "broken.yaml").write_text("distributed_type: [DEEPSPEED\n")
    with pytest.raises(ConfigError, match=r"training.distributed.*broken.yaml is not valid YAML"):
        _config(tmp_path, distributed="broken.yaml")
    (tmp_path / "other.yaml").write_text("compute_environment: LOCAL_MACHINE\n")
    with pytest.raises(ConfigError, match=r"other.yaml is not an accelerate config: distributed_type is None"):
        _config(tmp_path, distributed="other.yaml")
    with pytest.raises(ConfigError, match=r"training.lora.*cannot be merged from sharded weights \(zero3.yaml\)"):
        _config(tmp_path, distributed="zero3", lora={"r": 4})
    mine = tmp_path / "mine.yaml"
    mine.write_text((REPO / "config" / "accelerate" / "zero2.yaml").read_text())
    assert _config(tmp_path, distributed=str(mine), lora={"r": 4})["compute"]["training_dtype"] is None
    with pytest.raises(ConfigError, match=r"'training.mixed_precision' has moved: use compute.training_dtype"):
        _config(tmp_path, mixed_precision="bf16")
