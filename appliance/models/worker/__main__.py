"""`python -m appliance.models.worker`: a model worker process (appliance.models.worker.main).

The tie to the daemon comes first, before the slow llama_cpp import that main's module does.
"""

from appliance.models.worker.lifeline import die_with_parent

die_with_parent()

from appliance.models.worker.main import main  # noqa: E402  (after the tie, on purpose)

raise SystemExit(main())
