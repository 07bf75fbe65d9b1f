from dockguard.scanning.backends import ContainerTrivy, LocalTrivy, TrivyBackend, find_trivy
from dockguard.scanning.policy import evaluate
from dockguard.scanning.scanner import TrivyScanner

__all__ = ["ContainerTrivy", "LocalTrivy", "TrivyBackend", "TrivyScanner", "evaluate", "find_trivy"]
