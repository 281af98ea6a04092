"""Which fields of a record hold the prompt and the response: the schemas, their detection from
the first record, and the manual :class:`FieldMap`.

Schemas, detected from the first record in this order of preference (a field counts as present
when its key exists and its value is not null); every later record must fit the same schema:

* ``messages``: a ``messages`` list of ``{"role", "content"}`` turns (OpenAI; TRL's
  conversational format). A top-level ``system`` string is a system turn in front of the chat
  when the chat does not start with one.
* ``sharegpt``: a ``conversations`` list of ``{"from", "value"}`` turns (``human`` is ``user``,
  ``gpt`` is ``assistant``, LLaMA-Factory's ``observation`` / ``function_call`` tool turns), with
  an optional top-level ``system`` as for ``messages``.
* ``alpaca``: ``instruction``, optional ``input``, ``output``; LLaMA-Factory's optional
  ``system`` (a string) and ``history`` (``[user, assistant]`` pairs) are the earlier turns. The
  prompt is the instruction, then ``"\\n\\n"`` and the input when the input is not blank.
* ``conversational_prompt_completion``: TRL's conversational prompt/completion: ``prompt`` a
  list of turns, ``completion`` (or ``response``) a list of turns or one string (the assistant's
  answer). The two are one chat.
* ``prompt_completion``: ``prompt`` and ``completion`` (or ``response``) strings (TRL's standard
  prompt/completion).
* ``question_answer``: ``question`` and ``answer``.

Chats follow :mod:`tunesift.io.chat` (the last assistant turn is the response). A record with
only a ``text`` field (TRL's language-modeling format) is refused: there is no prompt/response
split to score.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesift.errors import InputError, OptionError

from .chat import chat_tags
from .describe import Loc, show, type_name

__all__ = ["SCHEMAS", "FieldMap", "Schema", "check_fields", "detect_schema", "resolve_schema"]

#: Detectable schemas, in order of preference when a record fits several.
SCHEMAS = (
    "messages",
    "sharegpt",
    "alpaca",
    "conversational_prompt_completion",
    "prompt_completion",
    "question_answer",
)

_EXPECTED = (
    "'messages' or 'conversations' (chat), 'instruction'+'output' (alpaca), "
    "'prompt'+'completion' (or 'response'; texts or chat turns), 'question'+'answer'"
)

#: ``--id-field none``: read no id field (ids from the content)
NO_ID = "none"


@dataclass(frozen=True)
class FieldMap:
    """A manual field mapping; every part is optional and overrides schema detection.

    * ``prompt``: a field name, or a comma-separated list of names (``"instruction,input"``).
      With several, the non-blank values are joined with ``"\\n\\n"``; the first field must be
      non-blank, the later ones may be blank or null (then they are left out). Every named field
      must exist in every record.
    * ``response``: one field name. When only one of ``prompt`` / ``response`` is given, the
      other comes from the detected schema.
    * ``messages``: the field holding the chat turns (cannot be combined with
      ``prompt`` / ``response``).
    * ``id``: the field holding the record id; every record must then have a unique one.
      ``"none"`` (:data:`NO_ID`): no id field, even where the records hold an ``id``; each gets an
      id from its content.

    Bad mappings raise :class:`~tunesift.errors.OptionError` when the map is made.
    """

    prompt: str | None = None
    response: str | None = None
    messages: str | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        for name in ("prompt", "response", "messages", "id"):
            value = getattr(self, name)
            if value is None:
                continue
            flag = f"--{name}-field"
            if not isinstance(value, str):
                raise OptionError(
                    f"{flag} must be a field name (a string), got {type_name(value)}"
                )
            value = value.strip()
            if name == "prompt":
                parts = [p.strip() for p in value.split(",")]
                if not all(parts):
                    raise OptionError(f"{flag} has an empty field name: {value!r}")
                if len(set(parts)) != len(parts):
                    raise OptionError(f"{flag} names a field twice: {value!r}")
                value = ",".join(parts)
            elif not value:
                raise OptionError(f"{flag} is an empty field name")
            elif "," in value:
                raise OptionError(f"{flag} takes one field name, got {value!r}")
            object.__setattr__(self, name, value)
        if self.messages is not None and (self.prompt is not None or self.response is not None):
            raise OptionError(
                "--messages-field cannot be combined with --prompt-field/--response-field: "
                "map either the chat turns or the two texts"
            )

    @classmethod
    def given(cls, prompt: str | None = None, response: str | None = None, messages: str | None = None,
              id: str | None = None) -> FieldMap | None:
        """The map of the fields named (``--prompt-field`` ...), or None when none is: detection decides."""
        names = {"prompt": prompt, "response": response, "messages": messages, "id": id}
        return cls(**names) if any(v is not None for v in names.values()) else None

    @property
    def prompt_fields(self) -> tuple[str, ...]:
        """The prompt field names, in order (empty when ``prompt`` is not mapped)."""
        return tuple(self.prompt.split(",")) if self.prompt else ()



@dataclass(frozen=True)
class Schema:
    """How the records of one input are read: detected from the first record or given by a
    :class:`FieldMap`.

    * ``name``: one of :data:`SCHEMAS`; ``"mapped"`` for a ``--prompt-field`` /
      ``--response-field`` map given in full, ``"mapped_chat"`` for ``--messages-field``.
    * ``kind``: ``"fields"`` (texts in named fields), ``"chat"`` (one list of turns) or
      ``"chat_pair"`` (turns in ``messages`` then ``completion``: TRL's conversational
      prompt/completion).
    * ``desc``: what every record must fit, for messages about missing fields.
    * ``messages``: the turns field (``chat``) or the prompt turns field (``chat_pair``);
      ``completion``: the completion field (``chat_pair``).
    * ``prompt``: the ``(field, must be present)`` parts of the prompt (``fields``);
      ``response``: the response field (``fields``).
    * ``system``: the optional top-level system prompt field, ``history``: the optional
      LLaMA-Factory history field (``""``: none).
    * ``tags``: LLaMA-Factory ShareGPT tags of the first record's chat (``chat``), as pairs.
    """

    name: str
    kind: str
    desc: str
    messages: str = ""
    completion: str = ""
    prompt: tuple[tuple[str, bool], ...] = ()
    response: str = ""
    system: str = ""
    history: str = ""
    tags: tuple[tuple[str, str], ...] = ()


def detect_schema(row: dict, *, source: str = "<row>", line: int | None = None) -> str:
    """Return the schema a record fits, one of :data:`SCHEMAS`, preferring them in that order.

    Only the field names decide, and for prompt/completion whether ``prompt`` is a list (chat
    turns) or not; types and contents are checked when the record is read. Raises
    :class:`~tunesift.errors.InputError` (naming ``source`` and ``line``) listing the fields
    found and expected when no schema fits, and saying why when the record is text-only.
    """

    def fits(has) -> str | None:
        if has("messages"):
            return "messages"
        if has("conversations"):
            return "sharegpt"
        if has("instruction") and has("output"):
            return "alpaca"
        if has("prompt") and (has("completion") or has("response")):
            if isinstance(row["prompt"], (list, tuple)):
                return "conversational_prompt_completion"
            return "prompt_completion"
        if has("question") and has("answer"):
            return "question_answer"
        return None

    # set fields first (a table's union of columns holds null where a row lacks one); then the
    # names alone, so that a first record with a null output reads as that record's defect
    name = fits(lambda key: row.get(key) is not None) or fits(lambda key: key in row)
    if name:
        return name
    found = ", ".join(show(k, 30) for k in row) or "none"
    nested = [k for k, v in row.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
    if isinstance(row.get("text"), str):
        hint = (
            " (a text-only record cannot be scored: tunesift scores each response given its "
            "prompt, and plain 'text' has no prompt/response split)"
        )
    elif nested:
        hint = f" ({show(nested[0], 30)} holds a list of objects: are the records inside it?)"
    else:
        hint = ""
    raise InputError(
        source,
        f"unknown schema: fields found: {found}{hint}; expected {_EXPECTED}; "
        "or name the fields with --prompt-field and --response-field",
        line=line,
    )


def _default_schema(name: str, first: dict, loc: Loc) -> Schema:
    where = f"detected from the first record ({loc.unit} {loc.line})"
    if name in ("messages", "sharegpt"):
        key = "messages" if name == "messages" else "conversations"
        what = "chat" if name == "messages" else "ShareGPT"
        return Schema(name, "chat", f"the {what} schema {where}", messages=key, system="system",
                      tags=tuple(chat_tags(first.get(key)).items()))
    if name == "alpaca":
        return Schema(
            name,
            "fields",
            f"the alpaca schema (instruction, optional input, output) {where}",
            prompt=(("instruction", True), ("input", False)),
            response="output",
            system="system",
            history="history",
        )
    # the key the first record has: a null completion there (a Parquet or HF table's first row)
    # is that record's missing value, not a sign that the field is called response
    resp = ("completion" if "completion" in first and (first["completion"] is not None or "response" not in first)
            else "response")
    if name == "conversational_prompt_completion":
        return Schema(name, "chat_pair", f"the conversational prompt/{resp} schema {where}",
                      messages="prompt", completion=resp)
    if name == "prompt_completion":
        return Schema(name, "fields", f"the prompt/{resp} schema {where}",
                      prompt=(("prompt", True),), response=resp)
    return Schema(name, "fields", f"the question/answer schema {where}",
                  prompt=(("question", True),), response="answer")


def resolve_schema(first: dict, loc: Loc, fm: FieldMap, source: str) -> Schema:
    """The schema of an input whose first row is ``first`` (at ``loc``), under the field map."""
    if fm.messages:
        return Schema("mapped_chat", "chat", "the chat field given by --messages-field",
                      messages=fm.messages, system="system",
                      tags=tuple(chat_tags(first.get(fm.messages)).items()))
    if not fm.prompt and not fm.response:
        return _default_schema(detect_schema(first, source=source, line=loc.line), first, loc)
    base = None
    if not (fm.prompt and fm.response):
        given, missing = (
            ("--prompt-field", "--response-field")
            if fm.prompt
            else ("--response-field", "--prompt-field")
        )
        try:
            name = detect_schema(first, source=source, line=loc.line)
        except InputError as e:
            found = e.reason.split("; expected", 1)[0].removeprefix("unknown schema: ")
            raise InputError(
                source,
                f"{given} was given without {missing}, and no known schema fits to supply "
                f"the other field ({found}); give {missing} too",
                line=loc.line,
            ) from None
        base = _default_schema(name, first, loc)
        if base.kind != "fields":
            raise OptionError(
                f"{given} was given without {missing}, but {source} is a chat file "
                f"({name}); give both, or neither"
            )
    prompt = tuple((f, True) for f in fm.prompt_fields) if fm.prompt else base.prompt
    return Schema(
        "mapped",
        "fields",
        "the field mapping (--prompt-field/--response-field)",
        prompt=prompt,
        response=fm.response or base.response,
        system=base.system if base else "",
        history=base.history if base else "",
    )


def check_fields(fields: FieldMap | None) -> FieldMap:
    """``fields``, or an empty map for None; anything else is an OptionError."""
    if fields is None:
        return FieldMap()
    if not isinstance(fields, FieldMap):
        raise OptionError(f"fields must be a FieldMap, got {type(fields).__name__}")
    return fields
