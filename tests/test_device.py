"""dgmerge.device: device names, precision checks, autocast and the fp16 scaler."""

import pytest
import torch

from dgmerge.config import ConfigError, TrainConfig
from dgmerge.device import DeviceError, autocast, check_precision, grad_scaler, resolve_device


def test_auto_is_the_cpu_without_a_gpu_and_the_first_gpu_with_one():
    want = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == want
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "CPU", "mps:0", ""])
def test_malformed_device_names_are_refused_naming_the_forms(spec):
    with pytest.raises(DeviceError, match="auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message seen on a machine without a GPU")
def test_cuda_without_a_gpu_says_what_to_use_instead():
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="--device cpu"):
            resolve_device(spec)


def test_the_config_validates_device_names_before_any_work():
    assert TrainConfig(device="cuda:3").device == "cuda:3"
    with pytest.raises(ValueError, match="cuda:N"):
        TrainConfig(device="gpu0")
    with pytest.raises(ValueError):
        TrainConfig(precision="fp8")


def test_fp16_needs_a_gpu_and_unknown_precisions_are_refused():
    cpu = torch.device("cpu")
    check_precision("bf16", cpu)
    check_precision("fp32", cpu)
    with pytest.raises(DeviceError, match="bf16 or fp32"):
        check_precision("fp16", cpu)
    with pytest.raises(DeviceError, match="fp32, bf16, fp16"):
        check_precision("int8", cpu)


def test_bf16_autocast_runs_matmuls_in_bf16_on_the_cpu_and_fp32_is_untouched():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (a @ b).dtype == torch.float32


def test_the_scaler_is_on_for_fp16_only_and_a_disabled_one_passes_losses_through():
    assert not grad_scaler(torch.device("cpu"), "fp32").is_enabled()
    assert not grad_scaler(torch.device("cpu"), "bf16").is_enabled()
    loss = torch.tensor(2.5)
    assert grad_scaler(torch.device("cpu"), "bf16").scale(loss) is loss


def test_config_error_type_is_what_the_cli_catches():
    # --set train.device=gpu must fail as a config error (exit 2), not as a traceback.
    from dgmerge.config import load_config
    with pytest.raises(ConfigError, match="device"):
        load_config("pacs_mobilenetv2", {"train.device": "gpu"})
