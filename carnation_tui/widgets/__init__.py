"""Reusable widgets of the console: the virtual jobs table, the event log and the status bar."""

from .event_log import EventLog
from .job_table import JobTable, VirtualTable, compute_rows
from .status_bar import StatusBar

__all__ = ["EventLog", "JobTable", "StatusBar", "VirtualTable", "compute_rows"]
