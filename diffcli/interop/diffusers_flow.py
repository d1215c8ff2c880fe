"""Flow-matching models as diffusers folders, both ways: ``FlowMatchEulerDiscreteScheduler``.

diffusers' flow schedulers (Esser et al. 2024, SD3) step the linear path
x_t = (1 - t) x0 + t eps, t in [0, 1], with a network that predicts the velocity eps - x0 and is
fed the timestep ``num_train_timesteps * t``; their ``shift`` s moves the steps' t to
s t / (1 + (s - 1) t) (Sec. 5.3.2), and Euler's step is x_{t'} = x_t + (t' - t) v. diffcli's
``objective=flow`` with ``interpolant=linear``, ``target=velocity`` and ``time_scale=1000`` is
that model: its network sees c_in x = x_t directly and ``1000 t``, and its ``shift`` is the same
map of t (sigma -> s sigma for sigma = t / (1 - t)). So the U-Net goes over unchanged and the
scheduler's config is ``num_train_timesteps=1000`` and the run's shift, fixed
(``use_dynamic_shifting=false``).

Everything else is one line naming what differs: the gvp / vp paths, the noise target, another
time scale, and EDM (diffusers' ``EDMEulerScheduler`` feeds the network ln(sigma) / 4).
"""

from __future__ import annotations

import json
import math
from typing import Any

from diffcli.diffusion.objectives import EDM, Flow

FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"
# schedulers whose model is the one above (the same config keys and timesteps)
FLOW_SCHEDULERS = (FLOW_SCHEDULER, "FlowMatchHeunDiscreteScheduler")
FLOW_TARGET = "diffcli.diffusion.objectives.flow.Flow"
TIME_SCALE = 1000  # diffusers feeds num_train_timesteps * t; its flow models use 1000
FLOW_SAMPLERS = {"diffcli.diffusion.samplers.euler.Euler": "euler",
                 "diffcli.diffusion.samplers.ddim.DDIM": "ddim"}


def _edm_refusal(edm: EDM) -> str:
    scale = float(edm.time_scale)
    fed = (f"this run's network was trained on time_scale ln(sigma) / 4 = {scale:g} ln(sigma) / 4"
           if scale != 1 else "as this run's, but DDPMPipeline does not precondition the "
           "U-Net's input as EDM does (scale_model_input)")
    return (f"objective=edm: diffusers' EDMEulerScheduler feeds the network ln(sigma) / 4, "
            f"{fed}; export it as format=safetensors")


def flow_scheduler_config(objective: Any) -> dict[str, Any]:
    """The ``FlowMatchEulerDiscreteScheduler`` config of a continuous ``objective`` (its shift
    filled in: :func:`~diffcli.diffusion.objectives.for_data`); ValueError, one line naming
    what differs from diffusers' flow model, for any other."""
    if isinstance(objective, EDM):
        raise ValueError(_edm_refusal(objective))
    if not isinstance(objective, Flow):
        raise ValueError(f"objective={getattr(objective, 'name', '?')} has no diffusers "
                         "scheduler; export it as format=safetensors")
    differs = [f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
               for key, value, wanted in (("interpolant", objective.interpolant, "linear"),
                                          ("target", objective.target, "velocity"),
                                          ("time_scale", float(objective.time_scale), TIME_SCALE))
               if value != wanted]
    if differs:
        raise ValueError(f"objective=flow with {', '.join(differs)}: diffusers' {FLOW_SCHEDULER}"
                         " steps x_t = (1 - t) x0 + t eps with a velocity network fed 1000 t "
                         "(interpolant=linear, target=velocity, time_scale=1000); export it as "
                         "format=safetensors")
    return {"num_train_timesteps": TIME_SCALE, "shift": objective.shift_value,
            "use_dynamic_shifting": False}


def flow_sampler(sampler: Any) -> str:
    """The sampler a flow model's scheduler stands for: ``euler`` or ``ddim`` (on the linear
    path DDIM with eta = 0 takes Euler's steps), both written as :data:`FLOW_SCHEDULER`; one
    line for the others."""
    target = str((sampler or {}).get("_target_"))
    if target not in FLOW_SAMPLERS:
        raise ValueError(f"a flow model's scheduler is {FLOW_SCHEDULER}: sampler=euler or ddim "
                         f"(the same steps on the linear path); {target.rsplit('.', 1)[-1]} has "
                         "no diffusers flow scheduler of the same algorithm")
    return FLOW_SAMPLERS[target]


_WHY = {"use_dynamic_shifting": "the shift is set per image size at sampling time (mu), and "
                                "diffcli's flow models have one fixed shift",
        "invert_sigmas": "the network is fed 1000 (1 - t) (Mochi's convention), diffcli's flow "
                         "models 1000 t"}


def flow_objective_node(config: dict[str, Any]) -> dict[str, Any]:
    """The diffcli objective node (``objective=flow``: linear, velocity, time_scale 1000, the
    config's shift) of a diffusers flow scheduler config; ValueError (one line) for settings that
    change the model. Settings of the sampling grid only (``use_karras_sigmas``,
    ``shift_terminal``, ``stochastic_sampling``, ...) are left to diffcli's ``sampler``."""
    for key, why in _WHY.items():
        if config.get(key):
            raise ValueError(f"scheduler {key}={json.dumps(config[key])}: {why}")
    steps = config.get("num_train_timesteps", TIME_SCALE)
    if steps != TIME_SCALE:
        raise ValueError(f"scheduler num_train_timesteps={steps}: diffcli reads flow models fed "
                         f"{TIME_SCALE} t (num_train_timesteps={TIME_SCALE})")
    shift = config.get("shift", 1.0)
    if isinstance(shift, bool) or not isinstance(shift, int | float) or not (
            math.isfinite(shift) and shift > 0):
        raise ValueError(f"scheduler shift={shift!r}: a shift is a positive number")
    return {"_target_": FLOW_TARGET, "interpolant": "linear", "target": "velocity",
            "shift": float(shift), "time_scale": float(TIME_SCALE)}


__all__ = ["FLOW_SCHEDULER", "FLOW_SCHEDULERS", "flow_objective_node", "flow_sampler",
           "flow_scheduler_config"]
