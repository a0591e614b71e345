"""Chat rows: a column holding a list of {role, content} structs (how HF chat datasets ship,
e.g. `messages`), rendered to the one text the encoder reads. The structure itself is kept as is.

Templates (`--chat-template`):
- `lines` (default): one `role: content` line per message, in order;
- `content`: each message's content on its own line, roles dropped;
- `user`: only the user messages' contents, one a line (the prompt side of a conversation).
A null list is a null text; a null content renders as an empty string.
"""
from __future__ import annotations

from typing import Sequence

import pyarrow as pa

TEMPLATES = ("lines", "content", "user")


def is_chat_type(kind: pa.DataType) -> bool:
    """A list of structs with string `role` and `content` fields."""
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return False
    item = kind.value_type
    if not pa.types.is_struct(item):
        return False
    names = {item.field(i).name: item.field(i).type for i in range(item.num_fields)}
    return all(k in names and (pa.types.is_string(names[k]) or pa.types.is_large_string(names[k])
                               or pa.types.is_null(names[k])) for k in ("role", "content"))


def render_one(messages: Sequence[dict] | None, template: str) -> str | None:
    if messages is None:
        return None
    if template == "lines":
        return "\n".join(f"{m.get('role') or ''}: {m.get('content') or ''}" for m in messages)
    if template == "content":
        return "\n".join(m.get("content") or "" for m in messages)
    if template == "user":
        return "\n".join(m.get("content") or "" for m in messages if m.get("role") == "user")
    raise ValueError(f"unknown chat template {template!r}; use one of {', '.join(TEMPLATES)}")


def render(column: pa.Array | pa.ChunkedArray, template: str) -> pa.Array:
    """The rendered text of every row of a chat column, as a string array (nulls stay null)."""
    return pa.array([render_one(m, template) for m in column.to_pylist()], pa.string())


def as_texts(column: pa.Array | pa.ChunkedArray, template: str = "lines") -> list[str]:
    """A text column's texts as Python strings: the strings themselves, or a chat column's rendering."""
    return render(column, template).to_pylist() if is_chat_type(column.type) else column.to_pylist()
