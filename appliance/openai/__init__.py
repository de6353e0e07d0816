"""OpenAI's shapes on the appliance's models: chat completions, completions and embeddings.

`shapes` holds the typed request bodies (msgspec structs) the API decodes; `chat.ChatService`
serves them through the model scheduler (appliance.models). The stateful Responses API is a
session with OpenAI's shape, so it lives with the sessions (appliance.sessions.responses).
"""
