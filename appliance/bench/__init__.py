"""Benchmark programs (`appliance bench ...`): they measure and print, never assert."""
