"""Training AnyStory on SDXL (METHOD.md §4; docs/TRAINING.md).

- `data`: the dataset format (folder + manifest.jsonl), loading and reference augmentation
- `synthetic`: synthetic scenes in that format
- `step`: one differentiable training pass; `trainer`: the accelerate loop, checkpoints, resume
- `stage1`, `stage2`: the commands; `config`: their JSON config
- `evaluate`: routing IoU, CLIP-T / CLIP-I / DINO; `proof`: the CPU benchmark (`tiny_base` for it)
"""
