"""Denoising networks: the DDPM U-Net, the DiT and the U-ViT for images and a small MLP for 2-D
points."""

from diffcli.nets.dit import DiT
from diffcli.nets.layers import count_parameters, timestep_embedding
from diffcli.nets.mlp import MLP
from diffcli.nets.unet import UNet
from diffcli.nets.uvit import UViT

__all__ = ["DiT", "MLP", "UNet", "UViT", "count_parameters", "timestep_embedding"]
