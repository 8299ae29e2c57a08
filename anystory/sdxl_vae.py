"""The full-size SDXL VAE's shape, for memory plans and benchmarks that build it without weights.

Kept apart from tiny.py: tiny.py's source is part of the training proof's cache key (its fitted
base is reused while the code that makes it is unchanged), and this config does not make it.
"""

# The VAE of stabilityai/stable-diffusion-xl-base-1.0 (vae/config.json)
SDXL_VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
