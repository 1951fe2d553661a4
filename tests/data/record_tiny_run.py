"""Re-record ``tiny_run.jsonl``: the events of a real tiny training run (a 2-layer byte-level GPT, 300 steps on
the built-in corpus, an evaluation and a sample every 10 steps), which ``tests/test_snapshots.py`` replays so
that the Train screen's pictures show real curves, the same on every machine.

    python tests/data/record_tiny_run.py
"""

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["GPTTUI_HOME"] = tempfile.mkdtemp()
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gpttui.core.config import GPTConfig  # noqa: E402
from gpttui.core.data import DataSettings, prepare_data  # noqa: E402
from gpttui.core.events import event_record  # noqa: E402
from gpttui.core.tokenizer import ByteTokenizer  # noqa: E402
from gpttui.core.train import TrainConfig, Trainer  # noqa: E402

data = prepare_data(DataSettings(source="builtin:pydoc", tokenizer="bytes", context_length=64, batch_size=8),
                    ByteTokenizer())
config = TrainConfig(epochs=1, max_steps=300, lr=4e-3, warmup_steps=10, min_lr=4e-4, eval_freq=10, eval_iter=2,
                     start_context="The return", sample_tokens=40, sample_at_eval=True, checkpoint_every=0,
                     save_name="tiny-pydoc", device="cpu", seed=123)
model = GPTConfig(vocab_size=257, context_length=64, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.1)
events = []
trainer = Trainer(data, ByteTokenizer(), config, model)
trainer.callback = events.append
trainer.run()
with open(Path(__file__).with_name("tiny_run.jsonl"), "w", encoding="utf-8") as f:
    for event in events:
        record = event_record(event)
        if record["event"] == "started":  # nothing of this machine's in the file
            record.update(run_id="20261120-093000-a1b2", run_dir="RUN_DIR")
        f.write(json.dumps(record) + "\n")
print(f"{len(events)} events, {events[-1]}")
