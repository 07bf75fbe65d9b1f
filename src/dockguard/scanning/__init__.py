from dockguard.scanning.policy import evaluate
from dockguard.scanning.trivy import TrivyScanner

__all__ = ["TrivyScanner", "evaluate"]
