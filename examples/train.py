"""A stand-in training job: reads the W&B environment contract, 'trains', prints metrics."""

import json
import os
import time

config = json.loads(os.environ.get("WANDB_CONFIG", "{}"))
run_id = os.environ.get("WANDB_RUN_ID", "?")
epochs = int(config.get("epochs", 2))
lr = float(config.get("lr", 0.1))
print(f"run {run_id}: training for {epochs} epochs at lr={lr}", flush=True)
loss = 1.0
for epoch in range(1, epochs + 1):
    time.sleep(0.3)
    loss *= 1 - lr * 10 / (1 + lr * 10)
    print(f"epoch {epoch}: loss={loss:.4f}", flush=True)
print("done", flush=True)
