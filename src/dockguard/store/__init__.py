from dockguard.store.jobs import JobStore, StaleUpdate, job_key

__all__ = ["JobStore", "StaleUpdate", "job_key"]
