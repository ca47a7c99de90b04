"""Standalone fine-tuning trainer (``python -m garden_assets.training --help``) and its launch helpers.

- `config.TrainConfig`: the settings (also the CLI); `config.tune_config`: the tuned_model recipe (a 5-minute CPU demo, or full epochs on a GPU).
- `trainer.train(config)`: run or resume; returns where the weights, adapter and log are.
- `launch.plan_launch(spec, config)`: the command line for a ComputeSpec (python / accelerate / deepspeed).
- `deepspeed.build_deepspeed_config(...)`: ZeRO-3 config.

Talks to Dagster only through dagster-pipes (when launched by it). Never imports dagster; importing this
package does not import torch.
"""

from garden_assets.training.config import TrainConfig, tune_config

__all__ = ["TrainConfig", "tune_config"]
