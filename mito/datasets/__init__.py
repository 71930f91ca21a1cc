"""Dataset specifics kept out of the generic core: AMi-Br's metadata join and the named proxy tasks.

``PROXY_TASKS`` is the task catalogue every command passes to the one resolver (mito.core.tasks.resolve_task).
"""

from mito.core.tasks import TaskSpec
from mito.datasets import amibr

PROXY_TASKS: dict[str, TaskSpec] = {**amibr.TASKS}

__all__ = ["PROXY_TASKS", "amibr"]
