"""The registry of the guard's monitors.

``DEFAULT_MONITORS`` is a plain list of factories (zero-argument callables, usually
the monitor classes themselves). :class:`trainguard.guard.api.Guard` builds one
monitor from each factory when it attaches, in list order. Adding a monitor is a
one-line append here; the order matters only for the cross-rank exchange payload,
which every rank builds from the same list.
"""

from __future__ import annotations

from collections.abc import Callable

from trainguard.guard.base import Monitor
from trainguard.guard.checks.data_order import DataOrderMonitor
from trainguard.guard.checks.dynamics import DynamicsMonitor
from trainguard.guard.checks.gradients import GradientMonitor
from trainguard.guard.checks.lineage import LineageMonitor
from trainguard.guard.checks.optimizer_audit import OptimizerAuditMonitor
from trainguard.guard.checks.patches import PatchMonitor
from trainguard.guard.checks.replicas import ReplicaMonitor
from trainguard.guard.checks.seeds import SeedMonitor
from trainguard.guard.checks.timing import TimingMonitor
from trainguard.guard.heartbeat import HeartbeatMonitor
from trainguard.guard.hooks.audit import AuditMonitor
from trainguard.guard.hooks.signals import SignalMonitor

MonitorFactory = Callable[[], Monitor]
"""Builds one monitor; called once per Guard."""

DEFAULT_MONITORS: list[MonitorFactory] = [
    AuditMonitor,  # first: blocks unsafe unpickling before anything else runs
    SignalMonitor,
    TimingMonitor,
    GradientMonitor,
    ReplicaMonitor,
    DynamicsMonitor,
    OptimizerAuditMonitor,
    SeedMonitor,  # before PatchMonitor: its snapshot must see the seed wrappers
    DataOrderMonitor,
    LineageMonitor,
    PatchMonitor,
    HeartbeatMonitor,  # last: its integrity snapshot covers every monitor and thread
]
"""Factories of the monitors every Guard runs (filtered by ``settings["monitors"]``)."""
