"""Agents and sessions: the one home of a session's lifecycle.

- `agents`: agents and their profiles; `tools`: the tools they call and the check of each call.
- `service`: sessions as the API offers them, and the start of each turn.
- `turn`: one turn (model -> tool calls -> tool runs -> model again), streamed as events.
- `context`: what of a transcript the model sees; `model_call`: one model call for a session.
- `parking`: where each session's KV cache is, and parking it when it must leave its slot.
- `responses`: OpenAI's Responses API, stored as turns of bare-model sessions.

The transcript itself lives in the store (appliance.store.sessions, appliance.store.messages).
"""
