"""Training a LoRA on your own pictures, as a job like any other (mode `train_lora`).

request.py (TrainLoraRequest), run.py (the method: the pictures into a run folder, the shared
LoRA trainer of training/lora.py, samples as previews, the file saved where its user finds it).
"""

from ..registry import Method
from .request import TrainLoraRequest


def _run(request, models, progress, outputs):
    from .run import run

    return run(request, models, progress, outputs)


METHOD = Method(name="training_lora", modes=("train_lora",), request=TrainLoraRequest, run=_run)

__all__ = ["METHOD", "TrainLoraRequest"]
