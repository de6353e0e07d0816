"""Agents and their sessions as a tree: an agent's node holds its sessions (forks under it too)."""

from __future__ import annotations

from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from appliance.client.records import Agent, Session
from tui import format as fmt


class SessionTree(Tree[Agent | Session]):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("agents", id=id)
        self.show_root = False

    def show_agents(self, agents: list[Agent], sessions: list[Session]) -> None:
        keep = self.selected_session.id if self.selected_session else None
        self.clear()
        nodes: dict[str | None, TreeNode[Agent | Session]] = {}
        for agent in agents:
            label = f"{agent.name}" + (f" ({agent.model})" if agent.model else "")
            nodes[agent.id] = self.root.add(label, data=agent, expand=True)
        found: TreeNode[Agent | Session] | None = None
        for s in sessions:
            parent = nodes.get(s.agent_id)
            if parent is None:
                parent = nodes[s.agent_id] = self.root.add(
                    s.agent_id or "models, no agent", expand=True
                )
            label = fmt.short_id(s.label, 30)
            if s.agent_id is None and s.model:
                label += f" ({s.model})"
            label += f" · {s.message_count}" if s.message_count else ""
            node = parent.add_leaf(("↳ " if s.parent_id else "") + label, data=s)
            if s.id == keep:
                found = node
        if found is not None:
            self.move_cursor(found)

    def select_session(self, session_id: str) -> None:
        for node in self._all_nodes():
            if isinstance(node.data, Session) and node.data.id == session_id:
                self.move_cursor(node)
                return

    def _all_nodes(self) -> list[TreeNode[Agent | Session]]:
        out: list[TreeNode[Agent | Session]] = []
        stack = list(self.root.children)
        while stack:
            node = stack.pop(0)
            out.append(node)
            stack.extend(node.children)
        return out

    @property
    def selected_session(self) -> Session | None:
        node = self.cursor_node
        return node.data if node is not None and isinstance(node.data, Session) else None

    @property
    def selected_agent(self) -> Agent | None:
        node = self.cursor_node
        while node is not None:
            if isinstance(node.data, Agent):
                return node.data
            node = node.parent
        return None
