"""Prefect flow `train-saes`: a thin wrapper over `maskshare.saes.training.train_saes`."""

from __future__ import annotations

from prefect import flow, get_run_logger

from maskshare.saes.training import SAETrainingConfig, train_saes


@flow(name="train-saes")
def train_saes_flow(config: SAETrainingConfig | None = None, out_dir: str | None = None,
                    quality: bool = True) -> str:
    """Train the SAE set of `config` (default: the embedded set) and return its folder."""
    out = train_saes(config or SAETrainingConfig(), out_dir=out_dir, quality=quality)
    get_run_logger().info("SAE set written to %s", out)
    return str(out)


if __name__ == "__main__":
    train_saes_flow()
