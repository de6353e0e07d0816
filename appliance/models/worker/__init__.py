"""A model worker: one llama.cpp model in its own process, and the daemon's side of it.

- `protocol`: the typed frames between the daemon and a worker.
- `process`: the daemon's side (spawn, talk, notice death).
- `main`: the worker process itself; `decode`: token-by-token text; `kvfile`: parked KV states.

This package's `__init__` imports nothing: the daemon imports `process` and `protocol` without
paying for llama_cpp, which only the worker process loads.
"""
