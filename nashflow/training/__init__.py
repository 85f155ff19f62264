"""The preference trainer (see :mod:`nashflow.training.trainer`); ``python -m nashflow.training
--spec spec.json`` is the entry point that the launcher (nashflow.launch) runs under accelerate."""

from nashflow.training.batches import PairBatches, load_training_table
from nashflow.training.metrics import MetricWriters
from nashflow.training.state import TrainState
from nashflow.training.trainer import add_lora, main, run_spec, train

__all__ = ["train", "run_spec", "main", "PairBatches", "load_training_table", "TrainState", "MetricWriters",
           "add_lora"]
