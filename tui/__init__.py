"""The appliance's terminal console: a Textual dashboard that drives a daemon over HTTP.

Nothing here runs inside the daemon and nothing in `appliance` imports this package (an
import-linter contract in pyproject.toml checks it); the console reaches the daemon only through
`appliance.client.ApplianceClient`, the client the CLI uses too (another contract keeps `tui` off
every other part of `appliance`), so it works the same against a local or a remote appliance.
"""

from __future__ import annotations
