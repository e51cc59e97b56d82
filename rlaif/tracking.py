"""Weights & Biases tracking: one W&B run per run folder, one step per round.

Online when ``WANDB_API_KEY`` is set (or ``wandb.mode: online``), offline otherwise, so a run on a
machine without network still keeps its charts (``wandb sync`` uploads them later). The W&B run id is
kept in the manifest, so a resumed run appends to the same W&B run. ``wandb.enabled: false`` turns it
off.
"""

import math
import os
from pathlib import Path

from rlaif.config import WandbConfig


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """``{"judge": {"mean_margin": 0.1}}`` → ``{"judge/mean_margin": 0.1}`` (numbers only)."""
    out = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            out[name] = value
    return out


class Tracker:
    def __init__(self, cfg: WandbConfig, run_dir: Path, run_id: str | None, config: dict):
        self.run = None
        if not cfg.enabled:
            return
        import wandb

        mode = cfg.mode
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=cfg.name or Path(run_dir).name,
            tags=cfg.tags or None,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            mode=mode,
            config=config,
        )

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log_round(self, round_n: int, metrics: dict) -> None:
        if self.run is not None:
            self.run.log({"round": round_n, **flatten(metrics)}, step=round_n)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
