"""Other formats, both ways: diffusers folders (UNet2DModel and AutoencoderKL layouts, weight
maps), safetensors with a JSON sidecar, ONNX; and the model card."""
