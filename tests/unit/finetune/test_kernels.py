"""The fused-kernel switch (Liger): on a GPU by default, never on CPU, a warning when asked
for and impossible."""

from __future__ import annotations

import pytest
from phiops_finetune import kernels


@pytest.mark.parametrize(
    ("setting", "on", "installed", "use", "warn"),
    [
        ("auto", "cuda", True, True, False),
        ("on", "cuda", True, True, False),
        ("off", "cuda", True, False, False),
        ("auto", "cpu", True, False, False),  # CPU keeps the plain path, quietly
        ("on", "cpu", True, False, True),  # asked for on CPU: said so
        ("auto", "cuda", False, False, True),  # package missing on a GPU: said so
        ("on", "cuda", False, False, True),
        ("off", "cpu", False, False, False),
    ],
)
def test_choice(setting: str, on: str, installed: bool, use: bool, warn: bool) -> None:
    chosen = kernels.choose(setting, on, installed)
    assert (chosen.use, chosen.warn) == (use, warn)


def test_messages_name_the_field_and_the_fix() -> None:
    assert "training.fusedKernels" in kernels.choose("on", "cpu", True).why
    assert "no GPU" in kernels.choose("on", "cpu", True).why
    missing = kernels.choose("auto", "cuda", False).why
    assert "pip install liger-kernel" in missing and "training.fusedKernels" in missing


def test_the_training_arguments_carry_the_choice(caplog: pytest.LogCaptureFixture) -> None:
    from phiops_finetune import training
    from phiops_finetune.preflight import Plan
    from phiops_workload.finetune import TrainJobConfig

    config = TrainJobConfig.model_validate(
        {
            "resource": {
                "apiVersion": "v",
                "kind": "FineTuneJob",
                "namespace": "n",
                "name": "x",
                "uid": "u",
            },
            "base_model": {"name": "m"},
            "dataset": {"path": "d"},
            "training": {"fused_kernels": "on"},
            "output_dir": "/tmp/unused",
        }
    )
    plan = Plan(None, [], [], 0, 0, 1)  # type: ignore[arg-type]
    assert training.training_arguments(config, plan, "cpu", fused=True).use_liger_kernel
    assert not training.training_arguments(config, plan, "cpu").use_liger_kernel
    with caplog.at_level("WARNING"):
        assert not kernels.plan("on", "cpu").use
    assert "training.fusedKernels" in caplog.text
