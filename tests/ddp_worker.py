"""Run by tests/test_ddp.py under torchrun (gloo, CPU): trains a tiny model with the engine as rank RANK of
WORLD_SIZE, and saves what it ended with to OUT/rank<RANK>.pt (its final weights and the step losses it saw).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py OUT CORPUS
"""

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])  # tests/, for ddp_setup

from ddp_setup import run_config, settings  # noqa: E402

from gpttui.core import distributed  # noqa: E402
from gpttui.core.data import prepare_data  # noqa: E402
from gpttui.core.tokenizer import ByteTokenizer  # noqa: E402
from gpttui.core.train import StepEvent, Trainer  # noqa: E402


def main(out: str, corpus: str) -> None:
    dist = distributed.from_env()
    distributed.start(dist, "cpu")
    try:
        data = prepare_data(settings(corpus, batch_size=2), ByteTokenizer())
        config, model_config = run_config()
        steps: list[float] = []
        trainer = Trainer(data, ByteTokenizer(), config, model_config, dist=dist,
                          callback=lambda e: steps.append(e.loss) if isinstance(e, StepEvent) else None)
        final = trainer.run()
        weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        torch.save({"weights": weights, "losses": steps, "final": final.to_dict(), "step": trainer.pos.step},
                   f"{out}/rank{dist.rank}.pt")
    finally:
        distributed.finish()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
