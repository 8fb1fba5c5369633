"""What a recipe asks for: cache keys (``ids``) and the task graph (``graph``)."""

from harness.plan.graph import Cell, Plan, Task, build_plan, expand
from harness.plan.ids import stable_hash

__all__ = ["Cell", "Plan", "Task", "build_plan", "expand", "stable_hash"]
