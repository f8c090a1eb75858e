"""tcllava.train: supervised fine-tuning from a YAML recipe, on one CPU or many GPUs (torchrun + FSDP2/DDP,
or accelerate + DeepSpeed), with atomic checkpoints and exact resume.

    from tcllava.train import TrainConfig, train
    summary = train(TrainConfig.from_yaml("configs/cpu_demo.yaml", ["max_steps=100"]))
"""

from tcllava.data.dataset import DataSource
from tcllava.train.config import LoraSettings, TrainConfig
from tcllava.train.loop import NonFiniteLoss, train

__all__ = ["DataSource", "LoraSettings", "NonFiniteLoss", "TrainConfig", "train"]
