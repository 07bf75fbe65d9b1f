from dockguard.scanning.backends import ContainerTrivy, LocalTrivy, TrivyBackend, find_trivy
from dockguard.scanning.policy import evaluate
from dockguard.scanning.scanner import Scanner

__all__ = ["ContainerTrivy", "LocalTrivy", "Scanner", "TrivyBackend", "evaluate", "find_trivy"]
