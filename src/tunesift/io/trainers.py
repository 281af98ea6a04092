"""What trainers need beside a selection: LLaMA-Factory's ``dataset_info.json`` entry.

LLaMA-Factory reads a dataset named in ``dataset_info.json`` of its ``dataset_dir``; an entry
names the file and maps its columns onto LLaMA-Factory's ``alpaca`` or ``sharegpt`` formatting::

    {"selection": {"file_name": "selected.jsonl", "formatting": "alpaca",
                   "columns": {"prompt": "instruction", "query": "input", "response": "output"}}}

The mapping follows the schema the input was read with (:class:`~tunesift.io.schema.Schema`):
alpaca-like schemas (``alpaca``, ``prompt_completion``, ``question_answer``, a field map of one or
two prompt fields) give ``alpaca``; chats (``messages``, ``sharegpt``, ``--messages-field``) give
``sharegpt`` with the ``tags`` of the first kept record's turns (no entry when a kept turn is spelled
another way or holds no text: :func:`unreadable_turn`). TRL's conversational
prompt/completion (the chat split over two columns) and prompts joined from three or more fields
have no LLaMA-Factory form: no entry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from .schema import Schema

__all__ = ["DATASET_NAME", "dataset_info", "unreadable_tools", "unreadable_turn"]

#: The dataset's name in the ``dataset_info.json`` tunesift writes (``dataset: selection``).
DATASET_NAME = "selection"


def unreadable_turn(rows: Iterable[dict], messages: str, tags: dict[str, str]) -> str | None:
    """Why LLaMA-Factory cannot read the chats of ``rows`` with ``tags``, or None: it matches each
    turn's role to the tags exactly (one spelling per kind of turn, taken from the first kept record)
    and needs text content (not a list of parts, not a tool call: OpenAI's ``tool_calls``, which
    tunesift scores as the call's JSON, are not read by its sharegpt formatting)."""
    role, content = tags["role_tag"], tags["content_tag"]
    known = {v for k, v in tags.items() if k not in ("role_tag", "content_tag")}
    # after one optional leading system turn, LLaMA-Factory's sharegpt converter wants
    # (user | observation) and (assistant | function_call) turns to alternate, in pairs
    odd = {tags.get("user_tag"), tags.get("observation_tag")} - {None}
    even = {tags.get("assistant_tag"), tags.get("function_tag")} - {None}
    for i, row in enumerate(rows, 1):
        turns = list(row.get(messages) or ())
        for turn in turns:
            if not isinstance(turn, dict) or not isinstance(turn.get(role), str) or turn[role] not in known:
                got = turn.get(role) if isinstance(turn, dict) else turn
                return f"kept record {i} has a turn with {role} {got!r}, not one of {sorted(known)}"
            if not isinstance(turn.get(content), str):
                return f"kept record {i} has a turn whose {content} is not text"
            if turn.get("tool_calls"):  # scored as the call's JSON; sharegpt would read the content alone
                return f"kept record {i} has a turn with tool_calls, which LLaMA-Factory's sharegpt formatting does not read"
            if turn[role] == tags.get("function_tag") and not _function_call(turn[content]):
                return (f"kept record {i} has a {turn[role]!r} turn that is not JSON with a name and arguments, "
                        "which LLaMA-Factory's function formatter needs")
        if turns and tags.get("system_tag") is not None and turns[0][role] == tags["system_tag"]:
            turns = turns[1:]
        for t, turn in enumerate(turns):
            if turn[role] not in (odd, even)[t % 2]:
                return (f"kept record {i}: its turn {t + 1} after any leading system turn has {role} "
                        f"{turn[role]!r} where LLaMA-Factory wants one of {sorted((odd, even)[t % 2])} (it skips "
                        "chats whose user and assistant turns do not alternate)")
        if len(turns) % 2:
            return (f"kept record {i} ends on a {turns[-1][role]!r} turn: LLaMA-Factory skips chats with an odd "
                    "number of turns after the system turn")
    return None


def unreadable_tools(rows: Iterable[dict]) -> str | None:
    """Why LLaMA-Factory cannot read the ``tools`` column of ``rows``, or None: its sharegpt
    formatting parses ``tools`` as a JSON string (a list or a text that is not JSON stops its run)."""
    for i, row in enumerate(rows, 1):
        tools = row.get("tools")
        if tools is None or (isinstance(tools, str) and not tools.strip()):
            continue
        if not isinstance(tools, str):
            return f"kept record {i} has tools that are not a JSON string"
        try:
            json.loads(tools)
        except (ValueError, RecursionError):
            return f"kept record {i} has tools that are not valid JSON"
    return None


def _function_call(text: str) -> bool:
    """A function-call turn as LLaMA-Factory reads it: JSON, one call or a list of calls, each with
    a ``name`` and ``arguments``."""
    try:
        calls = json.loads(text)
    except (ValueError, RecursionError):
        return False
    calls = calls if isinstance(calls, list) else [calls]
    return bool(calls) and all(isinstance(c, dict) and "name" in c and "arguments" in c for c in calls)


def dataset_info(schema: Schema, file_name: str, *, present: Iterable[str] | None = None) -> dict | None:
    """The LLaMA-Factory ``dataset_info.json`` entry for the selection file ``file_name`` (a path
    relative to the folder holding ``dataset_info.json``) read with ``schema``, or None when
    LLaMA-Factory cannot read the schema.

    ``present``: the columns the file holds; the optional columns (alpaca's ``input``,
    ``system``, ``history``; a chat's ``system`` and ``tools``) are mapped only when present
    (LLaMA-Factory fails on a mapped column the file lacks). None maps only the required ones.
    """
    have = set(present) if present is not None else set()
    if schema.kind == "chat":
        columns = {"messages": schema.messages}
        columns.update({c: c for c in (schema.system, "tools") if c and c in have})
        return {"file_name": file_name, "formatting": "sharegpt", "columns": columns,
                "tags": dict(schema.tags)}
    if schema.kind != "fields" or not 1 <= len(schema.prompt) <= 2:
        return None
    columns = {"prompt": schema.prompt[0][0]}
    if len(schema.prompt) == 2 and schema.prompt[1][0] in have:
        columns["query"] = schema.prompt[1][0]
    columns["response"] = schema.response
    for name, col in (("system", schema.system), ("history", schema.history)):
        if col and col in have:
            columns[name] = col
    return {"file_name": file_name, "formatting": "alpaca", "columns": columns}
