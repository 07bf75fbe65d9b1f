from dockguard.sandbox.build import BuildFailure, BuildOutcome
from dockguard.sandbox.engine import EngineSandbox, Prepared, connect
from dockguard.sandbox.result import parse_result
from dockguard.sandbox.run import RunOutcome, outcome_failure

__all__ = [
    "BuildFailure",
    "BuildOutcome",
    "EngineSandbox",
    "Prepared",
    "RunOutcome",
    "connect",
    "outcome_failure",
    "parse_result",
]
