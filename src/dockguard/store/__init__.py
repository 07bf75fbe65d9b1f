from dockguard.store.dockerfiles import RedisDockerfileStore
from dockguard.store.jobs import RedisJobStore, StaleUpdate, Superseded

__all__ = ["RedisDockerfileStore", "RedisJobStore", "StaleUpdate", "Superseded"]
