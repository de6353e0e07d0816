"""The model runtime: profiles and catalog, fetching and converting, the scheduler that owns model
lifetimes, and the worker processes that run llama.cpp."""
