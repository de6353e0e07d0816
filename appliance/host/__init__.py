"""The box the daemon runs on: what it checks, installs and cleans up there.

- `doctor` and `probes`: `appliance doctor`, each check reading the host through one probe.
- `service` and `systemd`: the systemd service (install, uninstall, sd_notify, watchdog).
- `janitor` and `leftovers`: nothing a daemon starts outlives it, nothing an earlier one left stays.
- `worker_jail`: the bwrap jail model workers and the grammar prover run in.
"""
