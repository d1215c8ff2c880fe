"""Denoising networks: the DDPM U-Net and the DiT for images and a small MLP for 2-D points."""

from diffcli.nets.dit import DiT
from diffcli.nets.layers import count_parameters, timestep_embedding
from diffcli.nets.mlp import MLP
from diffcli.nets.unet import UNet

__all__ = ["DiT", "MLP", "UNet", "count_parameters", "timestep_embedding"]
