"""The training engine: one resumable loop (``loop``) and the strategies that run it on one device,
under DDP or under DeepSpeed (``strategy``)."""

from harness.engine.loop import LoopResult, Preempted, Stepper, TrainLoop
from harness.engine.strategy import Prepared, Strategy, current_strategy, use_strategy

__all__ = ["LoopResult", "Preempted", "Prepared", "Stepper", "Strategy", "TrainLoop", "current_strategy",
           "use_strategy"]
