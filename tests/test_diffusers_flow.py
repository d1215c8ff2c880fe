"""Flow-matching models and diffusers' FlowMatchEulerDiscreteScheduler, both ways, as configs:
what maps exactly, and what is one line naming what differs (the CLI round trip is in
tests/test_objectives_cli.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from diffcli.diffusion.objectives import EDM, Flow
from diffcli.interop.diffusers_flow import (
    flow_objective_node,
    flow_sampler,
    flow_scheduler_config,
)
from diffcli.interop.diffusers_io import noise_model

FLOW = "FlowMatchEulerDiscreteScheduler"


def _one_line(call: Any, *words: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_a_linear_velocity_flow_maps_onto_the_scheduler_and_back() -> None:
    flow = Flow(shift=3.0, t_sampling="uniform")
    config = flow_scheduler_config(flow)
    assert config == {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
    schedule, node, prediction, learned = noise_model({"_class_name": FLOW, **config})
    assert node == {"_target_": "diffcli.diffusion.objectives.flow.Flow",
                    "interpolant": "linear", "target": "velocity", "shift": 3.0,
                    "time_scale": 1000.0}
    assert (prediction, learned, schedule["num_timesteps"]) == ("eps", False, 1000)
    back = Flow(**{k: v for k, v in node.items() if k != "_target_"})
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    assert all(a.equal(b) for a, b in zip(back.precondition(sigma), flow.precondition(sigma),
                                          strict=True))
    assert back.lattice_sigmas().equal(flow.lattice_sigmas())  # the shift went over
    # grid-only settings are diffcli's sampler's business; Heun's scheduler is the same model
    assert noise_model({"_class_name": "FlowMatchHeunDiscreteScheduler", "shift": 1,
                        "use_karras_sigmas": True, "stochastic_sampling": True})[1]["shift"] == 1


@pytest.mark.parametrize("objective, words", [
    (Flow(interpolant="gvp"), ["objective=flow with interpolant=gvp:", FLOW]),
    (Flow(target="noise", time_scale=1.0), ["target=noise, time_scale=1:", "1000 t"]),
    (EDM(), ["objective=edm:", "EDMEulerScheduler", "ln(sigma) / 4", "1000 ln(sigma) / 4"]),
    (EDM(time_scale=1.0), ["objective=edm:", "as this run's", "scale_model_input"]),
])
def test_other_continuous_objectives_are_one_line(objective: Any, words: list[str]) -> None:
    _one_line(lambda: flow_scheduler_config(objective), *words, "format=safetensors")


@pytest.mark.parametrize("config, words", [
    ({"use_dynamic_shifting": True}, ["use_dynamic_shifting=true", "fixed shift"]),
    ({"invert_sigmas": True}, ["invert_sigmas=true", "1000 (1 - t)"]),
    ({"num_train_timesteps": 500}, ["num_train_timesteps=500"]),
    ({"shift": -1.0}, ["shift=-1.0", "positive"]),
])
def test_unsupported_scheduler_settings_are_one_line(config: dict, words: list[str]) -> None:
    _one_line(lambda: flow_objective_node(config), *words)


def test_other_flow_and_edm_schedulers_and_samplers_are_one_line() -> None:
    for name in ("EDMEulerScheduler", "FlowMatchLCMScheduler"):
        _one_line(lambda n=name: noise_model({"_class_name": n}), f"scheduler {name}:", FLOW)
    assert flow_sampler({"_target_": "diffcli.diffusion.samplers.ddim.DDIM"}) == "ddim"
    _one_line(lambda: flow_sampler({"_target_": "diffcli.diffusion.samplers.heun.Heun"}),
              "sampler=euler or ddim", "Heun has no")
