"""One router per surface: sync run, queue, storage, health/metrics."""
