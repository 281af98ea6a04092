"""Records -> token ids, with an exact mask of the response tokens.

Every sequence tunesift scores is a concatenation of separately tokenised segments::

    header | prompt | user_end | response | end          (zero-shot: DONOD, DELIFT's no-example arm)
    header | prompt_j | user_end | response_j | between | prompt_i | user_end | response_i | end
                                                        (DELIFT: record j in context as an example)

The segment strings come from a :class:`TurnFormat`: either read off the tokenizer's chat
template (by rendering a probe conversation with sentinel strings and splitting on them) or
the documented plain template below. Tokenising segments separately makes the response mask
exact by construction (no offset mapping, no boundary guessing) and makes a record's
``prompt|user_end|response|end`` tokens identical in both DELIFT arms, so only the example
differs. For ChatML-style templates this equals tokenising the whole string, because segments
meet at special tokens or newlines (the tests check it), except where a text starts with
whitespace that BPE would merge with the newline before it (a prompt "  Q" after "user\n"): the
split form is the one generation produces (the prompt's ids, then the model's), and scoring,
training and evaluation all use it.

Record text is tokenised as text: a control string inside it (``<|im_end|>``, ``<|im_start|>``,
``<|endoftext|>``, any special token of the tokenizer) becomes the tokens of its characters, never
the control token, so a record cannot inject turn structure. Only the template's own strings
(header, user_end, end, between, the chat template's turn markers) are control tokens. Records
without control strings are tokenised exactly as before (``split_special_tokens`` changes nothing
for them).

Plain template (used when the tokenizer has no chat template, e.g. a base model)::

    [BOS]### Instruction:\\n{prompt}\\n\\n### Response:\\n{response}[EOS]

Paper template (``--template paper``, :class:`PaperRenderer`): the strings of the DELIFT
reference code (``get_icl_utility_kernel_no_vllm.py``), whose two arms use different wording::

    no-example arm:  ids("Instruction: Please generate a response to the following query.\\n\\n\\n"
                         "Query: " + P_i + "\\n") [EOS] ids(R_i) [EOS]
    example arm:     ids("Instruction:\\nUse the following example as a guide to answer the query in the
                         same format and style, providing a clear and concise response.\\n\\n\\n"
                         "Example:\\n" + P_j + "\\n" + R_j + "\\n\\n\\nQuery:\\n" + P_i + "\\n") [EOS] ids(R_i) [EOS]

with ``P = "Instruction: {instruction}\\nInput: {input}\\n"`` and ``R = " " + response`` (the
reference's text before and after ``Output:`` in ``"Instruction: ...\\nInput: ...\\nOutput: ..."``;
see :func:`paper_texts`), no BOS, the response and the final EOS scored. The target's tokens differ
between the arms (``"Query: "`` vs ``"Query:\\n"``), so the renderer gives them per arm
(:meth:`Renderer.query`) and the DELIFT kernel scores each arm with its own continuation.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

from .errors import OptionError, RecordTooLong, TunesiftError

PLAIN_HEADER = "### Instruction:\n"
PLAIN_USER_END = "\n\n### Response:\n"
PLAIN_BETWEEN = "\n\n" + PLAIN_HEADER  # the example is not closed with EOS in plain context

_U1, _A1, _U2 = "\x01TSU1\x01", "\x01TSA1\x01", "\x01TSU2\x01"
# record texts a renderer memoises (LRU); template texts are always kept
RECORD_MEMO = 4096
_SLOT = re.compile("\x02TSP(\\d+)\x02")  # a record text's place in a rendered prompt


@dataclass(frozen=True)
class TurnFormat:
    """The strings around user and assistant turns.

    ``header`` precedes the first user content (system prompt, BOS...), ``user_end`` sits between
    user content and assistant content, ``end`` closes an assistant turn and is scored with the
    response (it teaches the model to stop), ``between`` closes an assistant turn and opens the
    next user turn (used for chat context and DELIFT examples).
    """

    header: str
    user_end: str
    end: str
    between: str
    name: str


def plain_format(tokenizer) -> TurnFormat:
    """The plain template; BOS is put in front when the tokenizer adds one by default."""
    bos = ""
    if tokenizer.bos_token and tokenizer.bos_token_id is not None:
        ids = tokenizer("a").input_ids
        if ids and ids[0] == tokenizer.bos_token_id:
            bos = tokenizer.bos_token
    eos = tokenizer.eos_token or ""
    return TurnFormat(bos + PLAIN_HEADER, PLAIN_USER_END, eos, PLAIN_BETWEEN, "plain")


def chat_format(tokenizer) -> TurnFormat | None:
    """Read the turn strings off the tokenizer's chat template, or None when it has none or it
    does not fit the header/user/assistant pattern."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        three = tokenizer.apply_chat_template(
            [{"role": "user", "content": _U1}, {"role": "assistant", "content": _A1},
             {"role": "user", "content": _U2}], tokenize=False, add_generation_prompt=True)
        two = tokenizer.apply_chat_template(
            [{"role": "user", "content": _U1}, {"role": "assistant", "content": _A1}], tokenize=False)
    except Exception:  # templates raise all sorts of errors on unexpected roles
        return None
    if not all(s in three for s in (_U1, _A1, _U2)) or _A1 not in two:
        return None
    header, rest = three.split(_U1)
    user_end, rest = rest.split(_A1)
    between_full, user_end2 = rest.split(_U2)
    end_full = two.split(_A1)[1]
    if user_end2 != user_end or not between_full.startswith(end_full.rstrip()) or not two.startswith(header):
        return None
    end = end_full.rstrip()  # "<|im_end|>\n" -> "<|im_end|>": the trailing newline is not scored
    return TurnFormat(header, user_end, end, between_full, "chat")


def turn_format(tokenizer, template: str = "auto") -> TurnFormat:
    """``auto``: the chat template when there is one that fits, else plain; or force ``chat``/``plain``.

    ``paper`` changes whole sequences, not only the turn strings: build its renderer with
    :func:`renderer_for` (this raises for it)."""
    if template == PAPER:
        raise TunesiftError("--template paper needs its own renderer: use tunesift.render.renderer_for")
    if template == "plain":
        return plain_format(tokenizer)
    fmt = chat_format(tokenizer)
    if fmt is None:
        if template == "chat":
            raise TunesiftError("the tokenizer has no usable chat template; use --template plain")
        return plain_format(tokenizer)
    return fmt


@dataclass
class Encoded:
    """One record's token ids. ``prompt`` includes earlier chat turns; ``response`` includes ``end``."""

    prompt: list[int]
    response: list[int]
    truncated: int = 0  # prompt tokens cut from the left to fit max_length


def earlier_turns(record) -> list[tuple[str, str]]:
    """``(role, text)`` of the turns before a record's prompt, as they are rendered: a blank
    system turn is none."""
    return [(r, c) for r, c in record.context if r != "system" or c.strip()]


@dataclass
class Renderer:
    """Turns records into token id lists under one :class:`TurnFormat`.

    ``max_length`` bounds every sequence. The response is never cut: when a zero-shot sequence
    is too long the prompt loses tokens from its start; when a DELIFT example does not fit, the
    example is cut from its start. A response that cannot fit at all raises :class:`TunesiftError`.
    """

    tokenizer: object
    fmt: TurnFormat
    max_length: int = 2048
    _cache: dict = field(default_factory=dict, repr=False)  # template texts: few, kept
    _recent: OrderedDict = field(default_factory=OrderedDict, repr=False)  # record texts, LRU
    #: True when a target's tokens after an example differ from its zero-shot tokens
    #: (:meth:`query` is not :meth:`encode`); the DELIFT kernel then scores each arm apart.
    per_arm = False

    def ids(self, text: str) -> list[int]:
        """Token ids of template text: control strings in it are control tokens."""
        if text not in self._cache:
            self._cache[text] = self.tokenizer(text, add_special_tokens=False).input_ids
        return self._cache[text]

    def _memo(self, key, make: Callable[[], object]):
        """``make()`` memoised for the last ``RECORD_MEMO`` record keys: a record encoded twice in
        a row (its check, then its scoring) is tokenised once, while memory stays flat in the
        record count (an unbounded memo held every prompt of a 100,000-record pool)."""
        got = self._recent.get(key)
        if got is None:
            got = self._recent[key] = make()
            if len(self._recent) > RECORD_MEMO:
                self._recent.popitem(last=False)
        else:
            self._recent.move_to_end(key)
        return got

    def text_ids(self, text: str) -> list[int]:
        """Token ids of record text: a control string in it is tokenised as plain characters."""
        if not self.has_control(text):
            return self.ids(text)
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids

    @property
    def controls(self) -> tuple[str, ...]:
        """The strings the tokenizer would turn into control tokens that ``split_special_tokens``
        keeps out of record text: its special tokens (added ones marked special, and its own). An
        added token that is not special (Gemma 3 lists newline runs, ``"\n"`` to 31 of them) maps to
        itself either way in a fast tokenizer (the kind transformers loads by default), so text
        holding one is no control string: its record is rendered whole, as a template renders it
        (trimmed where the template trims), not slot by slot."""
        if "\x00controls" not in self._cache:
            decoder = getattr(self.tokenizer, "added_tokens_decoder", None)
            if decoder is not None:
                added = {t.content for t in decoder.values() if getattr(t, "special", True)}
            else:  # a tokenizer without the added tokens' flags: every added token
                added = set(getattr(self.tokenizer, "get_added_vocab", lambda: {})() or {})
            special = getattr(self.tokenizer, "all_special_tokens", []) or []
            self._cache["\x00controls"] = tuple(t for t in {*added, *special} if t)
        return self._cache["\x00controls"]

    def has_control(self, text: str) -> bool:
        return any(c in text for c in self.controls)

    def prompt_ids(self, record) -> list[int]:
        """Token ids of :meth:`prompt_text`, with the record's own text tokenised as text."""
        context = earlier_turns(record)
        texts = [c for _, c in context] + [record.prompt]
        if not any(self.has_control(t) for t in texts):
            text = self.prompt_text(record)
            return self._memo(text, lambda: self.tokenizer(text, add_special_tokens=False).input_ids)
        slot = iter(range(len(texts)))
        masked = SimpleNamespace(context=tuple((r, f"\x02TSP{next(slot)}\x02") for r, _ in context),
                                 prompt=f"\x02TSP{next(slot)}\x02", prompt_role=prompt_role(record))
        pieces = _SLOT.split(self.prompt_text(masked))
        out: list[int] = []
        for i, piece in enumerate(pieces):
            if i % 2:
                out += self.text_ids(texts[int(piece)])
            elif piece:
                out += self.ids(piece)
        return out

    @property
    def header(self) -> list[int]:
        """Token ids in front of every zero-shot sequence (and of the no-example arm)."""
        return self.ids(self.fmt.header)

    @property
    def example_header(self) -> list[int]:
        """Token ids in front of every example prefix: what is left when an example is cut to
        nothing (the header here; :class:`PaperRenderer` has its own)."""
        return self.header

    def prompt_text(self, record) -> str:
        """The record's prompt segment: earlier chat turns, then the prompt, between the header and
        ``user_end``.

        With a chat template the turns are rendered by the template itself (so consecutive user
        turns, tool turns and the like come out exactly as in fine-tuning) and the shared header
        and final ``user_end`` are cut off. A record's own system turn is put in front of its first
        turn's text: the header (with the template's default system prompt) is shared by every
        sequence, which DELIFT's prefix reuse relies on (so it is text of the first user turn, and the
        template's default system prompt stays; a blank system turn is none). A chat the assistant
        opens gets an empty user turn first. Without a template (or if the template's rendering does
        not start with the header), a user turn followed by an assistant turn ends with
        ``user_end``, an assistant turn with ``between``, other roles are written as
        ``role: content``, and turns in a row that are not the assistant's stay in one user turn,
        ``"\n\n"`` apart.

        Tool results (role ``tool``, also as the prompt: ``record.prompt_role``) go to the template
        as ``tool`` turns; a template that rejects that role gets them as ``user`` turns (the turn
        every template holds), and only if that fails too is the manual rendering used.
        """
        context = earlier_turns(record)
        system = [c for r, c in context if r == "system"]
        turns = [(r, c) for r, c in context if r != "system"] + [(prompt_role(record), record.prompt)]
        if turns[0][0] == "assistant":  # a chat the assistant opens: an empty user turn before it, so
            turns.insert(0, ("user", ""))  # the greeting sits in an assistant turn after the header
        if system:
            role, content = turns[0]
            turns[0] = (role, "\n\n".join(system) + "\n\n" + content)
        if self.fmt.name == "chat" and (len(turns) > 1 or not self._verbatim):
            text = self._template_text(turns)
            if text is None and any(r == "tool" for r, _ in turns):
                text = self._template_text([("user" if r == "tool" else r, c) for r, c in turns])
            if text is not None:
                return text
        # user_end opens an assistant turn: only an assistant turn follows it; turns in a row that
        # are not the assistant's (user, user; user, tool) stay in one user turn, "\n\n" apart
        parts = []
        for (role, content), (after, _) in zip(turns[:-1], turns[1:]):
            text = content if role in ("user", "assistant") else f"{role}: {content}"
            if role == "assistant":
                parts.append(text + self.fmt.between)
            else:
                parts.append(text + (self.fmt.user_end if after == "assistant" else "\n\n"))
        role, content = turns[-1]
        return "".join(parts) + (content if role == "user" else f"{role}: {content}")

    @property
    def _verbatim(self) -> bool:
        """Whether the chat template writes a lone user turn's content as given (ChatML, SmolLM2):
        then header + text is its rendering and no template runs per record. A template that
        changes it (Llama 3 and Gemma 3 trim whitespace) renders every record's prompt."""
        if "\x00verbatim" not in self._cache:
            probe = " \tProbe  X.\r\n"  # lead/trail whitespace, case, a double space, a CR
            self._cache["\x00verbatim"] = self._template_text([("user", probe)]) in (probe, None)
        return self._cache["\x00verbatim"]

    def _template_text(self, turns: list[tuple[str, str]]) -> str | None:
        """``turns`` rendered by the chat template, less the shared header and the final
        ``user_end``; None when the template rejects them or renders them otherwise."""
        try:
            text = self.tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in turns],
                                                      tokenize=False, add_generation_prompt=True)
        except Exception:  # a template that rejects a role
            return None
        h, u = self.fmt.header, self.fmt.user_end
        if isinstance(text, str) and text.startswith(h) and text.endswith(u) and len(text) >= len(h) + len(u):
            return text[len(h):len(text) - len(u)]
        return None

    def encode(self, record) -> Encoded:
        """Zero-shot encoding of one record (prompt | user_end, response | end)."""
        prompt = self.prompt_ids(record) + self.ids(self.fmt.user_end)
        response = self._response_ids(record.response) + self.ids(self.fmt.end)
        room = self.max_length - len(self.header) - len(response)
        if room < len(self.ids(self.fmt.user_end)) + 1:
            raise RecordTooLong(
                f"record {record.id} (line {record.line}): response of {len(response)} tokens does not fit "
                f"max_length {self.max_length}; raise --max-length or drop the record")
        cut = max(0, len(prompt) - room)
        return Encoded(prompt[cut:], response, cut)

    def _response_ids(self, text: str) -> list[int]:
        """Token ids of record text, not cached (responses and whole contexts are unique)."""
        if self.has_control(text):
            return self.text_ids(text)
        return self.tokenizer(text, add_special_tokens=False).input_ids  # not cached: responses are unique

    def sequence(self, record) -> tuple[list[int], list[int]]:
        """(input_ids, response_mask) of the zero-shot sequence; mask is 1 on scored tokens."""
        ids, n_response, _ = self.continuation(record)
        return ids, [0] * (len(ids) - n_response) + [1] * n_response

    def continuation(self, record) -> tuple[list[int], int, int]:
        """(input_ids, n_response, prompt tokens cut) of the zero-shot sequence: the last
        ``n_response`` ids are the scored response (with ``end``)."""
        e = self.encode(record)
        return self.header + e.prompt + e.response, len(e.response), e.truncated

    def example_prefix(self, record) -> list[int]:
        """Record j as an in-context example: header | prompt_j | user_end | response_j | between."""
        body = (self.prompt_ids(record) + self.ids(self.fmt.user_end)
                + self._response_ids(record.response)
                + self.ids(self.fmt.between))
        return self.header + body

    def query(self, record) -> Encoded:
        """A target's tokens after an example prefix (the example arm of DELIFT): the zero-shot
        :meth:`encode` here, so both arms share them; :class:`PaperRenderer` words them apart."""
        return self.encode(record)

    def fit_prefix(self, prefix: list[int], continuation_len: int) -> list[int]:
        """Cut an example prefix from the start of its body so prefix + continuation fits."""
        return fit_example(prefix, self.example_header, continuation_len, self.max_length)


def prompt_role(record) -> str:
    """The role of a record's prompt turn: ``"user"``, or ``"tool"`` when the response answers a
    tool result (``Record.prompt_role``; records without the attribute are user prompts)."""
    return getattr(record, "prompt_role", "user")


def fit_example(prefix: list[int], header: list[int], continuation_len: int, max_length: int) -> list[int]:
    """``prefix`` (header | example body) cut from the start of its body so that prefix +
    continuation fits ``max_length``; the header alone (the no-example arm) when nothing fits."""
    over = len(prefix) + continuation_len - max_length
    if over <= 0:
        return prefix
    body = prefix[len(header):]
    if over >= len(body):
        return list(header)  # nothing of the example fits: the no-example arm
    return list(header) + body[over:]


# -- the DELIFT reference code's prompt format (--template paper) -------------------------------

PAPER = "paper"
#: Every value of ``--template``.
TEMPLATES = ("auto", "chat", "plain", PAPER)
PAPER_NO_EXAMPLE = "Instruction: Please generate a response to the following query.\n\n\nQuery: "
PAPER_EXAMPLE = ("Instruction:\nUse the following example as a guide to answer the query in the same format "
                 "and style, providing a clear and concise response.\n\n\nExample:\n")
PAPER_QUERY = "\n\n\nQuery:\n"  # between the example's response and the target's prompt


def paper_texts(record) -> tuple[str, str]:
    """A record as the reference's prompt and response strings: ``("Instruction: {instruction}\\n
    Input: {input}\\n", " " + response)``, i.e. the text before and after ``Output:`` in the
    reference's ``"Instruction: {instruction}\\nInput: {input}\\nOutput: {output}"`` (the response
    keeps the leading space).

    * Records read with several prompt fields (alpaca ``instruction`` + ``input``, or
      ``--prompt-field a,b``): the first field is the instruction, the later non-blank ones (joined
      with ``"\\n\\n"``) the input, blank when there are none.
    * Records with earlier turns (chats, alpaca ``system`` / ``history``): an empty instruction and
      every turn, the prompt turn last, as ``"role: content"`` lines in the input (how the reference
      writes MT-Bench conversations).
    * Any other record: its prompt is the instruction and the input is blank.
    """
    instruction, inp = record.prompt, ""
    if record.context:
        turns = [*record.context, (prompt_role(record), record.prompt)]
        instruction, inp = "", "\n".join(f"{role}: {content}" for role, content in turns)
    else:
        schema = getattr(record, "schema", None)
        parts = getattr(schema, "prompt", ()) if getattr(schema, "kind", "") == "fields" else ()
        first = (getattr(record, "row", None) or {}).get(parts[0][0]) if len(parts) > 1 else None
        if isinstance(first, str) and record.prompt.startswith(first + "\n\n"):
            instruction, inp = first, record.prompt[len(first) + 2:]
    return f"Instruction: {instruction}\nInput: {inp}\n", " " + record.response


def paper_format(tokenizer) -> TurnFormat:
    """The turn strings of the paper template, for code that reads them: no header (no BOS), EOS
    between the prompt and the response (``user_end``) and after the response (``end``)."""
    eos = tokenizer.eos_token
    if not eos or tokenizer.eos_token_id is None:
        raise TunesiftError("--template paper needs a tokenizer with an EOS token (it separates the "
                            "prompt from the response and ends the response)")
    return TurnFormat("", eos, eos, "", PAPER)


class PaperRenderer(Renderer):
    """The DELIFT reference code's sequences (see the module docstring), with tunesift's length rule:
    the response is never cut, a too-long context loses tokens from its start and a too-long example
    is cut from the start of its body (an example cut to nothing gives UF = 0).

    Each context is tokenised as one string, as in the reference. The example arm is split into
    ``example_prefix(j) = ids(EXAMPLE) + ids(P_j + "\\n" + R_j + "\\n\\n\\nQuery:\\n")`` and
    ``query(i) = ids(P_i + "\\n") [EOS] ids(R_i) [EOS]`` so that example j's KV cache serves every
    target. Both cuts (after the example header and before the target's prompt) fall between
    ``":\\n"`` and ``"Instruction:"``, fixed text that GPT-2-style pre-tokenizers (SmolLM2, GPT-2,
    Llama 3, Qwen) always split there, so the parts tokenise like the whole string. Each record is
    checked (its example prefix followed by its own query against the whole string's tokens), and
    a tokenizer that merges across the cut is a clear error instead of a silent difference.
    Record text with control strings is tokenised as text (the reference would read them as control
    tokens).
    """

    per_arm = True

    @property
    def eos(self) -> list[int]:
        return [int(self.tokenizer.eos_token_id)]

    @property
    def example_header(self) -> list[int]:
        return self.ids(PAPER_EXAMPLE)

    def _fit(self, record, context: list[int], response: list[int], room: int) -> Encoded:
        """``context [EOS]`` cut from the left to ``room - len(response)`` tokens."""
        prompt = context + self.eos
        keep = room - len(response)
        if keep < 2:
            after = "" if room == self.max_length else \
                f" after the paper template's example header ({self.max_length - room} tokens)"
            raise RecordTooLong(
                f"record {record.id} (line {record.line}): response of {len(response)} tokens does not fit "
                f"max_length {self.max_length}{after}; raise --max-length or drop the record")
        cut = max(0, len(prompt) - keep)
        return Encoded(prompt[cut:], response, cut)

    def _response(self, record) -> list[int]:
        return self._response_ids(paper_texts(record)[1]) + self.eos

    def encode(self, record) -> Encoded:
        """The no-example arm: ``ids(NO_EXAMPLE + P + "\\n") [EOS]``, ``ids(R) [EOS]``."""
        prompt = paper_texts(record)[0]
        return self._fit(record, self._response_ids(PAPER_NO_EXAMPLE + prompt + "\n"), self._response(record),
                         self.max_length)

    def query(self, record) -> Encoded:
        """The target after an example: ``ids(P + "\\n") [EOS]``, ``ids(R) [EOS]``."""
        prompt = paper_texts(record)[0]
        room = self.max_length - len(self.example_header)
        self._check_cut(record)
        return self._fit(record, self._response_ids(prompt + "\n"), self._response(record), room)

    def example_prefix(self, record) -> list[int]:
        """``ids(EXAMPLE) + ids(P_j + "\\n" + R_j + "\\n\\n\\nQuery:\\n")``."""
        self._check_cut(record)
        return self.example_header + self._response_ids(self._example_body(record))

    def _example_body(self, record) -> str:
        prompt, response = paper_texts(record)
        return prompt + "\n" + response + PAPER_QUERY

    def _check_cut(self, record) -> None:
        """The record's example prefix followed by its own query tokenises like the whole string
        (checked once per record while it stays in the memo)."""
        texts = paper_texts(record)

        def check() -> bool:
            body, query = texts[0] + "\n" + texts[1] + PAPER_QUERY, texts[0] + "\n"
            whole = self._response_ids(PAPER_EXAMPLE + body + query)
            if whole != self.example_header + self._response_ids(body) + self._response_ids(query):
                raise TunesiftError(
                    f"record {record.id} (line {record.line}): --template paper: this tokenizer merges tokens "
                    "across the example/query boundary, which the kernel's shared example prefix needs "
                    "intact; use --template chat or plain")
            return True

        self._memo(("\x00cut", *texts), check)


def check_template(template: str) -> None:
    """A one-line OptionError unless ``template`` is one of :data:`TEMPLATES` (an unknown name must
    not fall back to ``auto`` unnoticed)."""
    if template not in TEMPLATES:
        raise OptionError(f"unknown template '{template}': use {', '.join(TEMPLATES[:-1])} or {TEMPLATES[-1]}")


def renderer_for(lm, template: str = "auto", max_length: int = 2048) -> Renderer:
    """The renderer every scorer of ``lm`` uses: its tokenizer, the template's turn format and the
    length limit (one place, so scorers, workers and fine-tuning render alike). ``auto`` is the
    template ``lm`` was trained with where ``tunesift finetune`` recorded one (``lm.template``)."""
    if template == "auto":
        template = getattr(lm, "template", "auto")
    return make_renderer(lm.tokenizer, template, max_length)


def make_renderer(tokenizer, template: str = "auto", max_length: int = 2048) -> Renderer:
    """:func:`renderer_for` from a tokenizer: ``auto`` | ``chat`` | ``plain`` | ``paper``."""
    check_template(template)
    if template == PAPER:
        return PaperRenderer(tokenizer, paper_format(tokenizer), max_length=max_length)
    return Renderer(tokenizer, turn_format(tokenizer, template), max_length=max_length)
