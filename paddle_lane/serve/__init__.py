"""Serving an export: the HTTP API (app.py), micro-batching (batcher.py), the Redis scale-out
queue and its workers (queue.py), and the gunicorn runner behind `paddle-lane serve` (server.py)."""
