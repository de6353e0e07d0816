"""Sandboxes: running untrusted, model-written code in many languages under bubblewrap.

Layers, bottom up:
- policy.py: what a sandbox sees (SandboxPolicy) and the pure function that makes bwrap's
  arguments; identity.py: who the code is on the host; limits.py: limits and rlimits.
- process.py: one bwrap process, its start-up handshake, exit and kill; runner.py: running it to
  its end under the limits; results.py: what the end means (ok, error, timeout, oom, killed).
- profiles.py / toolchain.py: languages from profiles/sandboxes/*.toml and their real tools.
- engine.py: turning a language, a workspace and a command into a running sandbox.
- repl/: interpreters that start before the code exists (the warm pool and stateful cells);
  pool.py: the warm pool; oneshot.py: one-shot runs; manager.py: stateful sandboxes.
- preflight.py: whether this host can run sandboxes at all, and how to fix it when not.
- images/: OCI images (pulled or imported) whose root file systems sandboxes can run in.

Nothing here imports the web framework; appliance.sandbox.service is the only user.
"""
