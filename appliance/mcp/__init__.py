"""The appliance as an MCP server: its sandboxes, models and agents as MCP tools, resources and
prompts, built on the official `mcp` SDK (which owns the protocol, the transports and the version
negotiation).

- `shapes`: the tools' structured outputs (pydantic models, so the SDK derives output schemas);
- `tools`: the tools themselves, calling the daemon's services in process;
- `server`: the `MCPServer` (tools, resources, prompts) and its Streamable HTTP session manager,
  which `appliance.api.mcp` mounts at `/mcp` behind the browser boundary and the token check;
- `relay`: `appliance mcp serve --stdio`, the same server over stdio for clients that launch
  servers as processes, relaying to a running daemon's `/mcp` with its token.
"""
