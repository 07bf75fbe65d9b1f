from dockguard.store.dockerfiles import RedisDockerfileStore
from dockguard.store.jobs import RedisJobStore, StaleUpdate

__all__ = ["RedisDockerfileStore", "RedisJobStore", "StaleUpdate"]
