"""Chat templates render in the environment llama-cpp-python's Jinja2ChatFormatter builds."""

from __future__ import annotations

import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from appliance.errors import InvalidRequest
from appliance.models.chat_format import render_prompt

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "one"},
    {"role": "assistant", "content": "two"},
    {"role": "user", "content": "three"},
]

# the last user message, found the way Qwen- and Llama-style templates do: a loop with {% break %}
LAST_USER = (
    "{% for m in messages | reverse %}{% if m.role == 'user' %}"
    "{% set ns.last = m.content %}{% break %}{% endif %}{% endfor %}"
)
TEMPLATES = {
    "break": "{% set ns = namespace(last='') %}" + LAST_USER + "last={{ ns.last }}",
    "continue": "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
    "{{ m.role }}:{{ m.content }};{% endfor %}",
    "generation": "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}"
    "[{{ m.content }}]{% endgeneration %}{% endif %}{% endfor %}",
    "tojson": "{{ {'b': 1, 'a': [messages[1].content]} | tojson(sort_keys=True, separators=(',', ':')) }}",
}
EXPECTED = {
    "break": "last=three",
    "continue": "user:one;assistant:two;user:three;",
    "generation": "[two]",
    "tojson": '{"a":["one"],"b":1}',
}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_a_template_renders_as_llama_cpp_python_renders_it(name: str) -> None:
    ours = render_prompt(TEMPLATES[name], MESSAGES, add_generation_prompt=False)
    theirs = Jinja2ChatFormatter(
        TEMPLATES[name], eos_token="", bos_token="", add_generation_prompt=False
    )
    assert ours == EXPECTED[name]
    assert ours == theirs(messages=MESSAGES).prompt  # type: ignore[arg-type]


def test_a_template_that_does_not_compile_is_a_clear_400() -> None:
    with pytest.raises(InvalidRequest, match="does not compile"):
        render_prompt("{% for m in messages %}{{ m.content }}", MESSAGES)
