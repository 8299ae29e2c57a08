"""Stage 2, the router: Routing QFormer and per-layer routers (encoder frozen).

    python -m anystory.training.stage2 --config stage2.json [--set key=value ...]
    accelerate launch -m anystory.training.stage2 --config stage2.json     # multi-GPU / multi-node
    python -m anystory.training.stage2 --plan --gpus 8 [--zero 2 ...]         # memory per GPU, full size

See docs/TRAINING.md for the config fields and the data format.
"""

from __future__ import annotations

from accelerate import PartialState

from .config import command_line
from .plan import plan_command, wants_plan
from .trainer import train


def main(argv: list[str] | None = None) -> None:
    if wants_plan(argv):  # memory per GPU at full size, no training
        print(plan_command(2, argv))
        return
    config = command_line(2, argv)
    folder, _ = train(config)
    if PartialState().is_main_process:
        print(f"checkpoint: {folder}")


if __name__ == "__main__":
    main()
