"""Other formats, both ways: diffusers folders (UNet2DModel, AutoencoderKL layouts and weight maps), safetensors with a JSON sidecar, ONNX; and the model card."""
