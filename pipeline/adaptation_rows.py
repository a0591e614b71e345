"""Adaptation rows in the output: every column the adaptation file has, typed like the backbone's.

Query reads the adaptation set whole, all its columns (`query/adaptation.parquet`); emit writes
those rows beside the selected backbone rows. Where a column shares its name with a backbone column
it is cast to the backbone's type (int32 ids to int64, say), so the shards have one schema; a cast
that cannot be done is refused by query, before anything is written, in one line. Columns only the
adaptation set has are added after the backbone's (null on backbone rows).
"""
from __future__ import annotations

import pyarrow as pa

from albat.stores.chat import as_texts, is_chat_type
from albat.stores.embedding_store import EXAMPLE_BOOKKEEPING as BOOKKEEPING
from albat.stores.errors import AlbatError


def adaptation_columns(adaptation: pa.Table, schema: pa.Schema, text_column: str, adaptation_text_column: str,
                       template: str) -> dict[str, pa.Array]:
    """The adaptation rows' own columns for the output: every column they have (query's bookkeeping
    aside), cast to the backbone's type where the backbone has one of that name. The backbone's text
    column gets the adaptation text: a plain text as is (under another name it is not repeated), a
    chat column's rendering where the backbone's text is plain (the structure kept under its own
    name), the messages themselves where both are chat columns."""
    text = adaptation.column(adaptation_text_column)
    is_chat, backbone_chat = is_chat_type(text.type), is_chat_type(schema.field(text_column).type)
    fill_text = is_chat or not backbone_chat  # else: plain adaptation text, chat backbone: nothing fits there
    if not fill_text and adaptation_text_column == text_column:
        raise AlbatError(f"adaptation column '{text_column}' holds plain text, the backbone's '{text_column}' holds "
                         "chat messages; give the adaptation set a chat column of that name, or embed the backbone "
                         "with another --text-column")
    out: dict[str, pa.Array] = {}
    for name in (c for c in adaptation.column_names if c not in BOOKKEEPING):
        if (fill_text and name == text_column) or (name == adaptation_text_column and is_chat == backbone_chat):
            continue  # the text column is filled below; the same text is not repeated under a second name
        out[name] = cast_like(adaptation.column(name), schema, name)
    if fill_text:
        value = text if backbone_chat else pa.array(as_texts(text, template), pa.string())
        out[text_column] = cast_like(value, schema, text_column)
    return out


def cast_like(values: pa.ChunkedArray | pa.Array, schema: pa.Schema, name: str) -> pa.Array:
    """An adaptation column cast to the backbone's column of that name (itself where there is none)."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if name not in schema.names or values.type == schema.field(name).type:
        return values
    target = schema.field(name).type
    try:
        return values.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise AlbatError(f"adaptation column '{name}' holds {values.type}, the backbone's '{name}' holds {target}, and "
                         f"it does not convert ({str(exc).splitlines()[0][:160]}); make the types agree or rename the "
                         "column in the adaptation file") from None
