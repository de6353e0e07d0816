"""Serverless AI Appliance: a single-box serverless AI runtime.

Models wake on the first request and sleep when idle (appliance.models), model-written code runs
in bubblewrap sandboxes (appliance.sandbox), and agents keep their sessions in SQLite
(appliance.store). appliance.api serves it all over HTTP; appliance.services is the layer between.
"""

from __future__ import annotations

__version__ = "0.1.0"
