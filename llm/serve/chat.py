"""The chat template: how /v1/chat/completions turns messages into one prompt for a plain-text model.

The model was trained on documents, not dialogues, so the template is a transcript any text model can continue:

    {system message}            (when there is one, then a blank line)
    User: {message}
    Assistant: {message}
    User: {message}
    Assistant:

Generation stops where the model starts the next turn ("\\nUser:" or "\\nAssistant:"), besides the request's own
stop strings; the reply is the text after "Assistant:".
"""

from __future__ import annotations

from collections.abc import Sequence

from llm.serve.schemas import ChatMessage

ROLES = {"user": "User", "assistant": "Assistant"}
TURN_STOPS = ["\nUser:", "\nAssistant:"]


def render(messages: Sequence[ChatMessage]) -> str:
    """The prompt for a conversation: system messages as plain paragraphs, then one line per turn."""
    parts = []
    for message in messages:
        if message.role == "system":
            parts.append(f"{message.content}\n\n")
        else:
            parts.append(f"{ROLES[message.role]}: {message.content}\n")
    return "".join(parts) + "Assistant:"
