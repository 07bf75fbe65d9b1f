from dockguard.store.jobs import JobStore, StaleUpdate

__all__ = ["JobStore", "StaleUpdate"]
