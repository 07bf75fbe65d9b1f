from dockguard.sandbox.build import BuildLimits
from dockguard.sandbox.engine import Prepared, Sandbox, connect
from dockguard.sandbox.result import parse_result
from dockguard.sandbox.run import RunLimits, outcome_failure

__all__ = [
    "BuildLimits",
    "Prepared",
    "RunLimits",
    "Sandbox",
    "connect",
    "outcome_failure",
    "parse_result",
]
