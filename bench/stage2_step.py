"""CPU cost of one stage-2 step of the proof, with and without the frozen-encoder cache.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/stage2_step.py [--scenes 20] [--steps 20]

The proof's shapes (256 px two-subject scenes, 96 px references, its base VAE width) on the tiny
SDXL, random weights (the cost of a step does not depend on them). One stage-1 step makes the
stage-1 checkpoint; then stage 2 runs `scenes` steps to warm the caches (every row once) and
`steps` more, timed in process CPU seconds (1 thread): with `cache_latents` only (the proof's
setting before issue 23) and with `cache_subjects` too. The losses of the two runs are compared:
the cache must not change them.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anystory.tiny import write_tiny_sdxl  # noqa: E402
from anystory.training.config import load_config  # noqa: E402
from anystory.training.proof import ProofConfig  # noqa: E402
from anystory.training.synthetic import SyntheticConfig, generate  # noqa: E402
from anystory.training.tiny_base import replace_vae  # noqa: E402
from anystory.training.trainer import Trainer  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    proof = ProofConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = generate(root / "scenes", SyntheticConfig(scenes=args.scenes, subjects=(2, 2), size=proof.size,
                                                         reference_size=proof.reference_size, shapes=proof.shapes, seed=2))  # fmt: skip
        base = write_tiny_sdxl(root / "tiny-sdxl")
        replace_vae(base, proof.vae_channels)
        common = {"base": str(base), "data": str(data), "resolution": proof.size, "report_to": "none", "progress_bar": False,
                  "checkpoint_every": 10**9, "augment": {"enabled": False}, "cache_latents": True}  # fmt: skip
        stage1 = Trainer(load_config(None, 1, {**common, "output_dir": str(root / "s1"), "max_steps": 1})).run()
        results = {}
        for cached in (False, True):
            values = {**common, "output_dir": str(root / f"s2-{cached}"), "init": str(stage1), "cache_subjects": cached,
                      "max_steps": args.scenes + args.steps, "timesteps": list(proof.stage2_timesteps)}  # fmt: skip
            trainer = Trainer(load_config(None, 2, values))
            marks, losses = {}, []

            def mark(step: int, loss: dict) -> None:
                losses.append(loss["loss"])
                if step in (args.scenes, args.scenes + args.steps):
                    marks[step] = cpu()

            trainer.run(mark)
            results[cached] = {"cpu_s_per_step": (marks[args.scenes + args.steps] - marks[args.scenes]) / args.steps,
                               "losses": losses}  # fmt: skip
    off, on = results[False], results[True]
    same = max(abs(a - b) for a, b in zip(off["losses"], on["losses"]))
    print(json.dumps({"cpu_s_per_step_uncached": round(off["cpu_s_per_step"], 4),
                      "cpu_s_per_step_cached": round(on["cpu_s_per_step"], 4),
                      "saving": round(1 - on["cpu_s_per_step"] / off["cpu_s_per_step"], 3),
                      "max_loss_difference": same, "torch": torch.__version__}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
