"""The scheduling layer: requests, continuous batching, chunked prefill and preemption.

It drives any manager that keeps `kvpager.core.protocol.KVManager` and imports nothing from
the memory layer: only the shared protocol, plans, config and errors.
"""

from kvpager.core.sched.output import PrefillChunk, SchedulerOutput, StepResult
from kvpager.core.sched.request import GroupStatus, Request, SequenceGroup, SequenceState
from kvpager.core.sched.scheduler import Scheduler

__all__ = ["GroupStatus", "PrefillChunk", "Request", "Scheduler", "SchedulerOutput",
           "SequenceGroup", "SequenceState", "StepResult"]
