"""Chat turns -> (prompt, response, earlier turns): the rules every chat schema shares.

A chat is a list of turns ``{"role", "content"}`` (OpenAI, TRL) or ``{"from", "value"}``
(ShareGPT); each turn may use either style. Roles are case-insensitive and mean
(:data:`ROLES`):

* ``system`` (OpenAI's ``developer`` too); ``user`` (ShareGPT ``human``); ``assistant`` (ShareGPT ``gpt``);
* tool turns: ``tool`` (OpenAI, TRL), ``function`` (OpenAI's older name) and ``observation``
  (LLaMA-Factory's ShareGPT) are all a **tool result**, role ``tool``; LLaMA-Factory's
  ``function_call`` is the assistant calling a tool, so it is an ``assistant`` turn whose text is
  the call. An OpenAI / TRL assistant turn's ``tool_calls`` are written after its content as one
  JSON line per call, ``{"name": ..., "arguments": ...}`` (the text LLaMA-Factory's
  ``function_call`` holds), so every turn is ``(role, text)`` with a role every chat template
  renders or falls back from (``tunesift.render``).

The **last assistant turn is the response** (the text scored); it must end the chat. The turn
right before it is the **prompt**: a user turn, or a tool result (then the chat must have a user
turn earlier). Every earlier turn is the **context**, in order, system turns included.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from ..errors import TunesiftError
from .describe import Loc, located_error, show, type_name, valid_text, with_article
from .json_values import json_line

__all__ = [
    "ROLES",
    "ChatParts",
    "Turn",
    "chat_tags",
    "history_turns",
    "parse_turns",
    "split_chat",
    "system_text",
    "turn_text",
]

#: Chat roles accepted in a turn (case-insensitive) and the role they become.
ROLES = {
    "system": "system",
    "developer": "system",  # OpenAI's name for system instructions to its newer models
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",  # OpenAI's older name for a tool result
    # ShareGPT
    "human": "user",
    "gpt": "assistant",
    # LLaMA-Factory's ShareGPT tool turns
    "observation": "tool",
    "function_call": "assistant",
}


class Turn(NamedTuple):
    """One parsed turn: its role (a value of :data:`ROLES`), its text, and its field path for
    messages (``messages[2]``)."""

    role: str
    text: str
    at: str


class ChatParts(NamedTuple):
    """What a chat gives a Record: ``context`` is the ``(role, text)`` turns before the prompt."""

    prompt: str
    response: str
    context: tuple[tuple[str, str], ...]
    prompt_role: str  # "user", or "tool" when the response answers a tool result


def parse_turns(value: Any, key: str, loc: Loc, source: str, *, allow_empty: bool = False) -> list[Turn]:
    """The turns of a chat field's value (a list of turn objects)."""
    if value is None:
        raise located_error(source, loc, "is null, expected a list of chat turns", key)
    if not isinstance(value, (list, tuple)):
        raise located_error(
            source, loc, f"expected a list of chat turns, got {with_article(type_name(value))}", key
        )
    if not value and not allow_empty:
        raise located_error(source, loc, "the chat has no turns", key)
    return [_turn(turn, f"{key}[{i}]", loc, source) for i, turn in enumerate(value)]


def _turn(turn: Any, at: str, loc: Loc, source: str) -> Turn:
    if not isinstance(turn, dict):
        raise located_error(
            source,
            loc,
            f"expected a turn object with 'role' and 'content', got {with_article(type_name(turn))}",
            at,
        )
    if turn.get("role") is not None:
        role_key, content_key = "role", "content"
    elif turn.get("from") is not None:
        role_key, content_key = "from", "value"
    else:
        raise located_error(source, loc, "the turn has no 'role' (nor ShareGPT 'from')", at)
    role = turn[role_key]
    if not isinstance(role, str):
        raise located_error(
            source, loc, f"expected a string, got {with_article(type_name(role))}", f"{at}.{role_key}"
        )
    canon = ROLES.get(role.strip().lower())
    if canon is None:
        raise located_error(
            source,
            loc,
            f"unknown role {show(role)}; expected one of {', '.join(ROLES)}",
            f"{at}.{role_key}",
        )
    calls = turn.get("tool_calls")
    if isinstance(calls, (list, tuple)) and not calls:  # [] is "no calls" (pandas and Arrow write it so)
        calls = None
    if calls is not None:
        if canon != "assistant":
            raise located_error(
                source, loc, f"only an assistant turn can hold tool calls, not a {canon!r} turn",
                f"{at}.tool_calls",
            )
        calls_text = _tool_calls_text(calls, loc, source, f"{at}.tool_calls")
        content = turn.get(content_key)
        if content is None or content == "":
            return Turn(canon, calls_text, at)
        return Turn(canon, turn_text(content, loc, source, f"{at}.{content_key}") + "\n" + calls_text, at)
    if content_key not in turn:
        raise located_error(source, loc, "the turn has no content", f"{at}.{content_key}")
    return Turn(canon, turn_text(turn[content_key], loc, source, f"{at}.{content_key}"), at)


def _tool_calls_text(calls: Any, loc: Loc, source: str, at: str) -> str:
    """OpenAI / TRL ``tool_calls`` as one JSON line per call: ``{"name": ..., "arguments": ...}``
    (``arguments`` given as a JSON string is parsed, so both spellings give the same text)."""
    if not isinstance(calls, (list, tuple)) or not calls:
        raise located_error(
            source, loc, f"expected a non-empty list of tool calls, got {show(calls)}", at
        )
    lines = []
    for j, call in enumerate(calls):
        fn = call.get("function", call) if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise located_error(
                source,
                loc,
                "a tool call needs a function name: {'type': 'function', "
                "'function': {'name': ..., 'arguments': ...}}",
                f"{at}[{j}]",
            )
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except (ValueError, RecursionError):  # not JSON (or nested / long past Python's limits)
                pass  # kept as the string it is
        try:  # as the JSON Lines output writes values: exact decimals, dates and bytes in tagged forms
            text = json_line({"name": name, "arguments": args})
        except (TunesiftError, ValueError, RecursionError) as e:
            raise located_error(source, loc, f"cannot write the tool call as JSON: {e}", f"{at}[{j}]") from None
        lines.append(valid_text(text, loc, source, f"{at}[{j}]"))
    return "\n".join(lines)


def turn_text(content: Any, loc: Loc, source: str, at: str) -> str:
    """A turn's content: a string, or a list of OpenAI text parts joined with blank lines."""
    if isinstance(content, str):
        return valid_text(content, loc, source, at)
    if isinstance(content, list) and not content:
        raise located_error(
            source, loc, "the content is an empty list; expected a string or a list of text parts", at
        )
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    got = "no 'text'" if "text" not in part else with_article(type_name(text))
                    raise located_error(
                        source,
                        loc,
                        f"a text content part needs a 'text' string, got {got}",
                        f"{at}[{j}].text",
                    )
                texts.append(valid_text(text, loc, source, f"{at}[{j}].text"))
                continue
            kind = part.get("type") if isinstance(part, dict) else type_name(part)
            raise located_error(
                source,
                loc,
                f"only text content parts are supported, got {show(kind)}",
                f"{at}[{j}]",
            )
        return "\n\n".join(texts)
    if content is None:
        raise located_error(source, loc, "is null, expected a string", at)
    raise located_error(
        source,
        loc,
        f"expected a string or a list of text parts, got {with_article(type_name(content))}",
        at,
    )


def split_chat(turns: list[Turn], key: str, loc: Loc, source: str) -> ChatParts:
    """The prompt, response and context of a chat (the rules in the module docstring); ``key``
    names the field for defects of the chat as a whole."""
    last = max((i for i, t in enumerate(turns) if t.role == "assistant"), default=None)
    if last is None:
        raise located_error(source, loc, "the chat has no assistant turn (the response)", key)
    if last != len(turns) - 1:
        raise located_error(
            source,
            loc,
            f"a {turns[last + 1].role!r} turn comes after the last assistant turn; "
            "the chat must end with the assistant's response",
            turns[last + 1].at,
        )
    if last == 0:
        raise located_error(
            source, loc, "the assistant turn has no user turn before it (the prompt)", turns[0].at
        )
    before = turns[last - 1]
    if before.role not in ("user", "tool"):
        raise located_error(
            source,
            loc,
            f"the turn before the last assistant turn is {before.role!r}; "
            "it must be the user turn (the prompt) or a tool result",
            before.at,
        )
    if before.role == "tool" and not any(t.role == "user" for t in turns[: last - 1]):
        raise located_error(
            source, loc, "the chat has no user turn before the response (only tool results)", key
        )
    if not before.text.strip():
        raise located_error(
            source,
            loc,
            f"the prompt (the {before.role} turn before the last assistant turn) is empty",
            before.at,
        )
    if not turns[last].text.strip():
        raise located_error(
            source,
            loc,
            "the response (the last assistant turn) is empty or whitespace-only",
            turns[last].at,
        )
    context = tuple((t.role, t.text) for t in turns[: last - 1])
    return ChatParts(before.text, turns[last].text, context, before.role)


def history_turns(value: Any, key: str, loc: Loc, source: str) -> list[Turn]:
    """LLaMA-Factory alpaca ``history``: a list of ``[user, assistant]`` string pairs, the earlier
    turns of the chat, oldest first (null or a blank string, a CSV's empty cell: none)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if not isinstance(value, (list, tuple)):
        raise located_error(
            source,
            loc,
            f"expected a list of [user, assistant] pairs, got {with_article(type_name(value))}",
            key,
        )
    turns = []
    for i, pair in enumerate(value):
        at = f"{key}[{i}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise located_error(
                source, loc, f"expected a [user, assistant] pair of strings, got {show(pair)}", at
            )
        for j, role in enumerate(("user", "assistant")):
            text = pair[j]
            if not isinstance(text, str):
                raise located_error(
                    source, loc, f"expected a string, got {with_article(type_name(text))}", f"{at}[{j}]"
                )
            turns.append(Turn(role, valid_text(text, loc, source, f"{at}[{j}]"), f"{at}[{j}]"))
    return turns


def system_text(row: dict, key: str, loc: Loc, source: str) -> str | None:
    """The optional top-level system prompt (LLaMA-Factory's ``system`` column): None when the
    field is absent, null or blank."""
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise located_error(
            source, loc, f"expected a string, got {with_article(type_name(value))} ({show(value)})", key
        )
    return valid_text(value, loc, source, key) if value.strip() else None


#: LLaMA-Factory's ShareGPT tag for each kind of turn, by the role key's spelling.
_DEFAULT_TAGS = {
    "from": {"user_tag": "human", "assistant_tag": "gpt", "observation_tag": "observation",
             "function_tag": "function_call", "system_tag": "system"},
    "role": {"user_tag": "user", "assistant_tag": "assistant", "observation_tag": "tool",
             "function_tag": "function_call", "system_tag": "system"},
}


def chat_tags(turns: Any) -> dict[str, str]:
    """LLaMA-Factory ShareGPT ``tags`` for a chat like ``turns`` (the first kept record's raw turns):
    the role/content keys of its first turn, and each kind of turn spelled as that chat spells it
    (defaults for the kinds it does not hold)."""
    first = next((t for t in _iter(turns) if isinstance(t, dict)), {})
    role_key = "role" if first.get("role") is not None or first.get("from") is None else "from"
    tags = {"role_tag": role_key, "content_tag": "content" if role_key == "role" else "value",
            **_DEFAULT_TAGS[role_key]}
    seen = set()
    for t in _iter(turns):
        raw = t.get(role_key) if isinstance(t, dict) else None
        canon = ROLES.get(raw.strip().lower()) if isinstance(raw, str) else None
        if canon is None:
            continue
        kind = {"user": "user_tag", "system": "system_tag", "tool": "observation_tag"}.get(canon)
        if canon == "assistant":
            kind = "function_tag" if raw.strip().lower() == "function_call" else "assistant_tag"
        if kind not in seen:
            seen.add(kind)
            tags[kind] = raw
    return tags


def _iter(turns: Any) -> Iterable:
    return turns if isinstance(turns, (list, tuple)) else ()
