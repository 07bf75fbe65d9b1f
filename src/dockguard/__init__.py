"""dockguard: scan, build and run untrusted Dockerfiles in a hardened sandbox."""

__version__ = "0.1.0"
