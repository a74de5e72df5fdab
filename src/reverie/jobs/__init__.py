"""Jobs: queuing, running and following them (the interface in queue.py, the engines beside it).

The Celery engine (celery_engine.py) is imported only when asked for: the embedded default
needs neither Celery nor Redis.
"""

from .embedded import EmbeddedQueue
from .live import JobTimeout, Live, LiveBoard, ServerStopping
from .queue import EngineUnavailable, JobQueue

__all__ = ["EmbeddedQueue", "EngineUnavailable", "JobQueue", "JobTimeout", "Live", "LiveBoard", "ServerStopping"]
