"""The shipped accelerate configs (train/accelerate_configs/) are what `accelerate launch --config_file` accepts, and
set what their comments promise; the training paths that cannot run sharded refuse with a message saying what to do.
What needs several GPUs (the launches themselves) is not tested here; two-process DDP on CPU is
(tests/test_distributed.py)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import DistributedType
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

from train.grad_cache import feature_cached_step

CONFIG_DIR = Path(__file__).resolve().parents[1] / "train" / "accelerate_configs"
EXPECTED = {
    "ddp_multi_gpu.yaml": DistributedType.MULTI_GPU,
    "multi_node.yaml": DistributedType.MULTI_GPU,
    "fsdp.yaml": DistributedType.FSDP,
    "deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
}


def launch_arguments(name: str):
    """What `accelerate launch --config_file <name> train/vlp.py` resolves before starting any process."""
    args = launch_command_parser().parse_args(["--config_file", str(CONFIG_DIR / name), "train/vlp.py"])
    return _validate_launch_command(args)[0]


def test_every_shipped_config_is_tested():
    assert sorted(path.name for path in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerates_own_loader(name):
    config = load_config_from_file(str(CONFIG_DIR / name))
    assert config.distributed_type == EXPECTED[name]
    assert config.mixed_precision == "bf16" and not config.use_cpu


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_plugin_key_is_a_launch_option(name):
    """accelerate turns each fsdp_config / deepspeed_config key into the launch flag of that name; a misspelt key
    would be silently ignored, so check them against the launcher's own options."""
    options = launch_command_parser()._option_string_actions
    config = load_config_from_file(str(CONFIG_DIR / name))
    for key in {**(config.fsdp_config or {}), **(config.deepspeed_config or {})}:
        assert f"--{key}" in options, f"{name}: {key} is not an accelerate launch option"


def test_launcher_resolves_the_multi_node_and_fsdp_settings():
    multi_node = launch_arguments("multi_node.yaml")
    assert multi_node.multi_gpu and multi_node.num_machines == 2 and multi_node.num_processes == 16
    assert multi_node.main_process_ip and multi_node.main_process_port == 29500
    fsdp = launch_arguments("fsdp.yaml")
    assert fsdp.use_fsdp and fsdp.fsdp_version == 2 and fsdp.fsdp_auto_wrap_policy == "SIZE_BASED_WRAP"
    deepspeed = launch_arguments("deepspeed_zero2.yaml")
    assert deepspeed.use_deepspeed and deepspeed.zero_stage == 2 and deepspeed.gradient_accumulation_steps == 1


def test_configs_ship_with_the_package():
    pyproject = (CONFIG_DIR.parents[1] / "pyproject.toml").read_text()
    assert 'train = ["accelerate_configs/*.yaml"]' in pyproject


@pytest.mark.parametrize("sharding", [DistributedType.FSDP, DistributedType.DEEPSPEED])
def test_feature_cached_step_refuses_sharded_parameters_and_says_what_to_do(sharding):
    accelerator = SimpleNamespace(distributed_type=sharding)
    model = torch.nn.Linear(2, 2)
    micro_batches = [{"x": torch.ones(1, 2)}] * 3
    with pytest.raises(ValueError) as error:
        feature_cached_step(accelerator, model, micro_batches, lambda b: (model(b["x"]),), lambda f: f.sum())
    message = str(error.value)
    assert sharding.value in message and "--gradient_accumulation_steps 3" in message
    assert "--gradient_accumulation_steps 1" in message and "ddp_multi_gpu.yaml" in message
    assert (CONFIG_DIR / "ddp_multi_gpu.yaml").is_file()
    assert model.weight.grad is None  # refused before any work


def test_runner_refuses_accumulation_under_deepspeed_before_any_work(monkeypatch, tmp_path):
    """DeepSpeed steps the optimiser inside each backward, so k micro-batches would be k steps: refused, naming the
    flag and what to do, before the data is loaded."""
    from train import runner
    from train.vlp import VLPTask

    monkeypatch.setattr(runner, "make_accelerator", lambda *args: SimpleNamespace(distributed_type=DistributedType.DEEPSPEED))
    monkeypatch.setattr(VLPTask, "load_splits", lambda self: pytest.fail("the data was loaded before the refusal"))
    with pytest.raises(ValueError, match=r"--gradient_accumulation_steps 2 under DeepSpeed.*--gradient_accumulation_steps 1"):
        runner.run(VLPTask, ["--output_dir", str(tmp_path), "--gradient_accumulation_steps", "2", "--report_to", "none"])
