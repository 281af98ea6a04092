"""Trainer formats in and out: TRL's standard and conversational formats, LLaMA-Factory's alpaca
(system, history) and ShareGPT (system, tool turns), reading part of an input (limit, sample), and
the LLaMA-Factory dataset_info.json written beside a selection."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tunesift.cli import main
from tunesift.errors import InputError, OptionError
from tunesift.io.records import read_records, records_from_rows, schema_of
from tunesift.io.schema import FieldMap, detect_schema
from tunesift.io.trainers import DATASET_NAME, dataset_info


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read(tmp_path, rows, **kw):
    return read_records(jsonl(tmp_path / "d.jsonl", rows), **kw)


def error(tmp_path, rows, **kw) -> InputError:
    with pytest.raises(InputError) as info:
        read(tmp_path, rows, **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "d.jsonl")), msg
    return info.value


def msg(role, content):
    return {"role": role, "content": content}


def sg(role, value):
    return {"from": role, "value": value}


# ----------------------------------------------------------------------------- TRL


def test_trl_standard_prompt_completion(tmp_path):
    recs = read(tmp_path, [{"prompt": "The sky is", "completion": " blue."}])
    assert (recs[0].prompt, recs[0].response, recs[0].context) == ("The sky is", " blue.", ())
    assert schema_of(recs).name == "prompt_completion"


def test_trl_conversational_prompt_completion(tmp_path):
    rows = [
        {"prompt": [msg("system", "Be brief."), msg("user", "Sky colour?")],
         "completion": [msg("assistant", "Blue.")]},
        {"prompt": [msg("user", "Hi"), msg("assistant", "Hello"), msg("user", "2+2?")],
         "completion": [msg("assistant", "4")]},
        {"prompt": [msg("user", "Grass?")], "completion": "Green."},  # a completion given as text
    ]
    assert detect_schema(rows[0]) == "conversational_prompt_completion"
    recs = read(tmp_path, rows)
    assert schema_of(recs).name == "conversational_prompt_completion"
    assert (recs[0].prompt, recs[0].response, recs[0].context) == ("Sky colour?", "Blue.", (("system", "Be brief."),))
    assert (recs[1].prompt, recs[1].response) == ("2+2?", "4")
    assert recs[1].context == (("user", "Hi"), ("assistant", "Hello"))
    assert (recs[2].prompt, recs[2].response, recs[2].context) == ("Grass?", "Green.", ())


@pytest.mark.parametrize(("bad", "fld", "words"), [
    ({"prompt": [msg("user", "a")], "completion": [msg("user", "b")]}, "completion", ("no assistant turn",)),
    ({"prompt": [msg("user", "a")], "completion": []}, "completion", ("no turns",)),
    ({"prompt": "a", "completion": [msg("assistant", "b")]}, "prompt", ("expected a list of chat turns", "string")),
    ({"prompt": [msg("user", "a")], "completion": [msg("assistant", "")]}, "completion[0]", ("response", "empty")),
    ({"prompt": [msg("user", "a"), msg("assistant", "b")], "completion": [msg("user", "c")]}, "completion",
     ("no assistant turn",)),
])
def test_trl_conversational_errors_name_the_field(tmp_path, bad, fld, words):
    first = {"prompt": [msg("user", "ok")], "completion": [msg("assistant", "fine")]}
    e = error(tmp_path, [first, bad])
    assert (e.line, e.field) == (2, fld), str(e)
    for w in words:
        assert w in str(e), (w, str(e))


def test_trl_messages(tmp_path):
    recs = read(tmp_path, [{"messages": [msg("user", "Hi"), msg("assistant", "Yo")]}])
    assert schema_of(recs).name == "messages" and recs[0].response == "Yo"


def test_text_only_records_are_refused_with_the_reason(tmp_path):
    e = error(tmp_path, [{"text": "The sky is blue."}])
    for w in ("unknown schema", "'text'", "text-only record cannot be scored", "no prompt/response split",
              "--prompt-field"):
        assert w in str(e), (w, str(e))
    assert e.line == 1


# ----------------------------------------------------------------------------- LLaMA-Factory alpaca


def test_alpaca_system_and_history_become_earlier_turns(tmp_path):
    rows = [
        {"instruction": "And 3+3?", "input": "", "output": "6", "system": "You add numbers.",
         "history": [["1+1?", "2"], ["2+2?", "4"]]},
        {"instruction": "Hi", "output": "Hello", "system": "  ", "history": None},  # blank / null: none
        {"instruction": "Hi", "output": "Hello", "history": []},
    ]
    recs = read(tmp_path, rows)
    assert schema_of(recs).name == "alpaca"
    assert (recs[0].prompt, recs[0].response) == ("And 3+3?", "6")
    assert recs[0].context == (("system", "You add numbers."), ("user", "1+1?"), ("assistant", "2"),
                               ("user", "2+2?"), ("assistant", "4"))
    assert recs[1].context == () and recs[2].context == ()


@pytest.mark.parametrize(("bad", "fld", "words"), [
    ({"history": "1+1? 2"}, "history", ("list of [user, assistant] pairs", "string")),
    ({"history": [["a", "b", "c"]]}, "history[0]", ("pair",)),
    ({"history": [["a", 2]]}, "history[0][1]", ("expected a string", "number")),
    ({"system": 5}, "system", ("expected a string", "number")),
])
def test_alpaca_system_and_history_defects(tmp_path, bad, fld, words):
    e = error(tmp_path, [{"instruction": "i", "output": "o"}, {"instruction": "i", "output": "o", **bad}])
    assert (e.line, e.field) == (2, fld), str(e)
    for w in words:
        assert w in str(e), (w, str(e))


# ----------------------------------------------------------------------------- ShareGPT, tools


def test_sharegpt_top_level_system(tmp_path):
    rows = [
        {"conversations": [sg("human", "Hi"), sg("gpt", "Hello")], "system": "Be kind."},
        {"conversations": [sg("system", "Own."), sg("human", "Hi"), sg("gpt", "Hello")], "system": "Column."},
    ]
    recs = read(tmp_path, rows)
    assert schema_of(recs).name == "sharegpt"
    assert recs[0].context == (("system", "Be kind."),)
    assert recs[1].context == (("system", "Own."),)  # the chat's own system turn wins, as in LLaMA-Factory


def test_sharegpt_tool_turns(tmp_path):
    call = '{"name": "weather", "arguments": {"city": "Paris"}}'
    rows = [
        # the answer after a tool result: the tool result is the prompt
        {"conversations": [sg("human", "Weather in Paris?"), sg("function_call", call),
                           sg("observation", '{"temp": 21}'), sg("gpt", "21 degrees.")],
         "tools": '[{"name": "weather"}]'},
        # the tool call itself is the response
        {"conversations": [sg("human", "Weather in Paris?"), sg("function_call", call)]},
    ]
    recs = read(tmp_path, rows)
    assert (recs[0].prompt, recs[0].response, recs[0].prompt_role) == ('{"temp": 21}', "21 degrees.", "tool")
    assert recs[0].context == (("user", "Weather in Paris?"), ("assistant", call))
    assert (recs[1].prompt, recs[1].response, recs[1].prompt_role) == ("Weather in Paris?", call, "user")


def test_openai_tool_calls_and_tool_messages(tmp_path):
    def row(args):
        return {"messages": [
            msg("user", "Weather in Paris?"),
            {"role": "assistant", "content": None,
             "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": args}}]},
            {"role": "tool", "name": "weather", "content": "21"},
            msg("assistant", "21 degrees."),
        ]}

    recs = read(tmp_path, [row({"city": "Paris"}), row('{"city": "Paris"}')])
    call = '{"name": "weather", "arguments": {"city": "Paris"}}'
    for r in recs:  # arguments as an object or as a JSON string: the same text
        assert r.context == (("user", "Weather in Paris?"), ("assistant", call))
        assert (r.prompt, r.prompt_role, r.response) == ("21", "tool", "21 degrees.")
    assert recs[0].id != recs[1].id  # the rows differ


@pytest.mark.parametrize(("bad", "fld", "words"), [
    ([sg("observation", "x"), sg("gpt", "y")], "conversations", ("no user turn before the response",)),
    ([sg("human", "a"), sg("observation", " "), sg("gpt", "y")], "conversations[1]", ("tool turn", "empty")),
    ([{"from": "human", "value": "a", "tool_calls": [{"function": {"name": "f"}}]}, sg("gpt", "b")],
     "conversations[0].tool_calls", ("only an assistant turn",)),
    ([sg("human", "a"), {"role": "assistant", "tool_calls": [{"function": {}}]}], "conversations[1].tool_calls[0]",
     ("function name",)),
])
def test_tool_turn_defects(tmp_path, bad, fld, words):
    e = error(tmp_path, [{"conversations": [sg("human", "a"), sg("gpt", "b")]}, {"conversations": bad}])
    assert (e.line, e.field) == (2, fld), str(e)
    for w in words:
        assert w in str(e), (w, str(e))


def test_function_role_is_a_tool_result(tmp_path):
    rows = [{"messages": [msg("user", "a"), msg("assistant", "call"), msg("function", "out"), msg("assistant", "b")]}]
    [r] = read(tmp_path, rows)
    assert (r.prompt, r.prompt_role) == ("out", "tool")


# ----------------------------------------------------------------------------- limit and sample

ROWS = [{"instruction": f"Say {i}.", "output": f"{i}."} for i in range(20)]


def test_limit_reads_the_first_records_only(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:5]) + "{not json\n", encoding="utf-8")
    recs = read_records(path, limit=3)
    assert [r.row for r in recs] == ROWS[:3] and [r.line for r in recs] == [1, 2, 3]
    assert [r.id for r in recs] == [r.id for r in read_records(path, limit=5)][:3]
    with pytest.raises(InputError, match="invalid JSON"):  # past the limit: the bad line is read
        read_records(path, limit=6)
    assert len(read_records(jsonl(tmp_path / "e.jsonl", ROWS), limit=100)) == 20  # fewer: all of them


def test_sample_is_seeded_uniform_and_in_input_order(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", ROWS)
    full = read_records(path)
    a = read_records(path, sample=5, seed=1)
    assert len(a) == 5 and [r.line for r in a] == sorted(r.line for r in a)
    assert [r.id for r in a] == [full[r.line - 1].id for r in a]  # ids of the full read
    assert [r.id for r in read_records(path, sample=5, seed=1)] == [r.id for r in a]
    picks = {tuple(r.line for r in read_records(path, sample=5, seed=s)) for s in range(8)}
    assert len(picks) > 1  # the seed matters
    # the documented rule
    import random

    assert [r.line for r in a] == [i + 1 for i in sorted(random.Random(1).sample(range(20), 5))]
    # every record is as likely to be picked: over many seeds each is picked about k/n of the time
    counts = [0] * 20
    for s in range(400):
        for r in read_records(path, sample=5, seed=s):
            counts[r.line - 1] += 1
    assert all(60 <= c <= 140 for c in counts), counts  # expected 100 each
    both = read_records(path, limit=10, sample=4, seed=3)
    assert len(both) == 4 and all(r.line <= 10 for r in both)


def test_sample_counts_only_the_defects_it_keeps(tmp_path):
    rows = [*ROWS[:10], {"instruction": "bad", "output": ""}]
    path = jsonl(tmp_path / "d.jsonl", rows)
    keeps_bad = [s for s in range(30) if any(r.line == 11 for r in read_records(path, sample=3, seed=s,
                                                                                  on_error="skip"))]
    misses_bad = [s for s in range(30) if s not in keeps_bad]
    assert keeps_bad and misses_bad
    assert len(read_records(path, sample=3, seed=misses_bad[0])) == 3
    with pytest.raises(InputError, match="the response is empty"):
        read_records(path, sample=3, seed=keeps_bad[0])


@pytest.mark.parametrize(("kw", "words"), [
    ({"limit": 0}, "--limit must be a whole number"),
    ({"limit": 2.5}, "--limit must be a whole number"),
    ({"sample": True}, "--sample must be a whole number"),
    ({"sample": 21}, "--sample 21 is more than the 20 records"),
    ({"sample": 3, "seed": "x"}, "--seed must be a whole number"),
])
def test_limit_and_sample_options_are_checked(tmp_path, kw, words):
    with pytest.raises(OptionError, match=words):
        read_records(jsonl(tmp_path / "d.jsonl", ROWS), **kw)


def test_records_from_rows_limit_and_sample():
    assert [r.row for r in records_from_rows(ROWS, limit=2)] == ROWS[:2]
    assert len(records_from_rows(ROWS, sample=7, seed=2)) == 7


# ----------------------------------------------------------------------------- dataset_info.json


def schema(tmp_path, rows, fields=None):
    return schema_of(read(tmp_path, rows, fields=fields))


def test_dataset_info_alpaca_maps_only_present_columns(tmp_path):
    s = schema(tmp_path, [{"instruction": "i", "input": "x", "output": "o", "system": "s", "history": []}])
    assert dataset_info(s, "selected.jsonl", present={"instruction", "input", "output", "system", "history"}) == {
        "file_name": "selected.jsonl", "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                    "history": "history"}}
    assert dataset_info(s, "f", present={"instruction", "output"})["columns"] == {
        "prompt": "instruction", "response": "output"}


@pytest.mark.parametrize(("row", "columns"), [
    ({"prompt": "p", "completion": "c"}, {"prompt": "prompt", "response": "completion"}),
    ({"prompt": "p", "response": "c"}, {"prompt": "prompt", "response": "response"}),
    ({"question": "q", "answer": "a"}, {"prompt": "question", "response": "answer"}),
])
def test_dataset_info_text_schemas_are_alpaca(tmp_path, row, columns):
    info = dataset_info(schema(tmp_path, [row]), "selected.jsonl", present=row)
    assert info == {"file_name": "selected.jsonl", "formatting": "alpaca", "columns": columns}


def test_dataset_info_chats_are_sharegpt_with_the_records_tags(tmp_path):
    s = schema(tmp_path, [{"conversations": [sg("human", "a"), sg("function_call", "c"), sg("observation", "o"),
                                             sg("gpt", "b")], "system": "s", "tools": "[]"}])
    info = dataset_info(s, "selected.jsonl", present={"conversations", "system", "tools"})
    assert info == {"file_name": "selected.jsonl", "formatting": "sharegpt",
                    "columns": {"messages": "conversations", "system": "system", "tools": "tools"},
                    "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                             "assistant_tag": "gpt", "observation_tag": "observation",
                             "function_tag": "function_call", "system_tag": "system"}}
    s = schema(tmp_path, [{"messages": [msg("System", "s"), msg("user", "a"), msg("assistant", "b")]}])
    info = dataset_info(s, "x.jsonl", present={"messages"})
    assert info["columns"] == {"messages": "messages"}
    assert info["tags"] == {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                            "assistant_tag": "assistant", "observation_tag": "tool",
                            "function_tag": "function_call", "system_tag": "System"}  # spelled as the data
    s = schema(tmp_path, [{"chat": [sg("user", "a"), sg("assistant", "b")]}], FieldMap(messages="chat"))
    info = dataset_info(s, "x.jsonl", present={"chat"})
    assert info["columns"] == {"messages": "chat"}
    assert (info["tags"]["user_tag"], info["tags"]["assistant_tag"]) == ("user", "assistant")


def test_dataset_info_none_where_llamafactory_has_no_form(tmp_path):
    s = schema(tmp_path, [{"prompt": [msg("user", "a")], "completion": [msg("assistant", "b")]}])
    assert dataset_info(s, "selected.jsonl") is None
    s = schema(tmp_path, [{"a": "1", "b": "2", "c": "3", "r": "4"}], FieldMap(prompt="a,b,c", response="r"))
    assert dataset_info(s, "selected.jsonl") is None
    s = schema(tmp_path, [{"a": "1", "b": "2", "r": "4"}], FieldMap(prompt="a,b", response="r"))
    assert dataset_info(s, "f.jsonl", present={"a", "b", "r"})["columns"] == {"prompt": "a", "query": "b",
                                                                             "response": "r"}


SHAREGPT = [{"conversations": [sg("human", f"Question {i}?"), sg("gpt", f"Answer {i}.")], "system": "Be brief."}
            for i in range(12)]


@pytest.mark.parametrize("out_format", ["jsonl", "parquet", "hf"])
def test_select_writes_dataset_info_that_loads(tmp_path, out_format):
    datasets = pytest.importorskip("datasets")
    data = jsonl(tmp_path / "d.jsonl", SHAREGPT)
    out = tmp_path / "out"
    rc = main(["select", str(data), "--method", "random", "--budget", "5", "--out", str(out), "-q",
               "--out-format", out_format])
    assert rc == 0
    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    entry = info[DATASET_NAME]
    assert entry["formatting"] == "sharegpt"
    assert entry["columns"] == {"messages": "conversations", "system": "system"}
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert "dataset_info.json" in manifest["files"]
    # LLaMA-Factory loads file_name (relative to the folder) with datasets' loader for its extension
    path = out / entry["file_name"]
    builder = {".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow"}[path.suffix]
    ds = datasets.load_dataset(builder, data_files=[str(path)], split="train", cache_dir=str(tmp_path / "c"))
    assert len(ds) == 5 and {"conversations", "system"} <= set(ds.column_names)
    assert ds[0]["conversations"][0]["from"] == entry["tags"]["user_tag"]
    # a second run into the same folder replaces the set (dataset_info.json is one of tunesift's files)
    assert main(["select", str(data), "--method", "random", "--budget", "4", "--out", str(out), "-q",
                 "--out-format", out_format]) == 0


def test_no_dataset_info_for_a_schema_llamafactory_cannot_read(tmp_path):
    rows = [{"prompt": [msg("user", f"q{i}")], "completion": [msg("assistant", f"a{i}")]} for i in range(6)]
    out = tmp_path / "out"
    assert main(["select", str(jsonl(tmp_path / "d.jsonl", rows)), "--method", "random", "--budget", "3",
                 "--out", str(out), "-q"]) == 0
    assert (out / "selected.jsonl").is_file() and not (out / "dataset_info.json").exists()


def test_no_dataset_info_when_a_kept_chat_turn_is_spelled_another_way_or_holds_no_text(tmp_path, capsys):
    """LLaMA-Factory matches each turn's role to the tags exactly and needs text content; the tags
    come from the first kept record, so a later 'human' among 'user' turns, or a tool call with null
    content, would fail there: no entry, and a warning that says why."""
    from tunesift.io.trainers import unreadable_turn

    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
            "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system"}
    good = [{"messages": [msg("user", "a"), msg("assistant", "b")]}]
    assert unreadable_turn(good, "messages", tags) is None
    assert "with role 'human'" in unreadable_turn(good + [{"messages": [msg("human", "a"), msg("assistant", "b")]}],
                                                  "messages", tags)
    call = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]}
    assert "content is not text" in unreadable_turn([{"messages": [msg("user", "a"), call]}], "messages", tags)
    rows = [{"messages": [msg("user", f"q{i}"), msg("assistant", f"a{i}")]} for i in range(5)]
    rows.append({"messages": [msg("human", "q"), msg("assistant", "a")]})
    out = tmp_path / "out"
    assert main(["select", str(jsonl(tmp_path / "d.jsonl", rows)), "--method", "random", "--budget", "1.0",
                 "--out", str(out), "-q"]) == 0
    assert (out / "selected.jsonl").is_file() and not (out / "dataset_info.json").exists()
    err = " ".join(capsys.readouterr().err.split())  # the warning, as rich wraps it on stderr
    assert "no dataset_info.json for LLaMA-Factory: kept record 6 has a turn with role 'human'" in err


def test_dataset_info_tags_follow_the_kept_rows_when_the_first_input_row_is_dropped(tmp_path):
    """The tags once came from the first input row: when it spelled roles 'Human'/'GPT' and was not
    kept, the kept rows' 'human'/'gpt' turns did not match them and no entry was written."""
    rows = [{"id": "first", "src": "a", "conversations": [{"from": "Human", "value": "q"},
                                                          {"from": "GPT", "value": "a"}]}]
    rows += [{"id": f"r{i}", "src": "b", "conversations": [{"from": "human", "value": f"q{i}"},
                                                            {"from": "gpt", "value": f"a{i}"}]} for i in range(4)]
    out = tmp_path / "out"
    assert main(["select", str(jsonl(tmp_path / "d.jsonl", rows)), "--method", "random", "--budget", "1",
                 "--within", "src=b", "--out", str(out), "-q"]) == 0
    kept = [json.loads(x)["id"] for x in (out / "selected.jsonl").read_text().splitlines()]
    assert len(kept) == 1 and kept != ["first"]
    tags = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))["selection"]["tags"]
    assert tags["user_tag"] == "human" and tags["assistant_tag"] == "gpt" and tags["role_tag"] == "from"


def test_no_dataset_info_for_a_chat_llamafactory_would_skip():
    """LLaMA-Factory's sharegpt converter skips ("Invalid role tag", "Invalid message count") a chat
    whose user and assistant turns do not alternate after one leading system turn: tunesift reads
    and scores such chats, so the entry it wrote would train on fewer records than were kept."""
    from tunesift.io.trainers import unreadable_turn

    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
            "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system"}
    fine = [[msg("system", "s"), msg("user", "a"), msg("assistant", "b")],
            [msg("user", "a"), msg("function_call", '{"name": "f", "arguments": {"x": 1}}'), msg("tool", "r"),
             msg("assistant", "b")]]
    assert unreadable_turn([{"messages": m} for m in fine], "messages", tags) is None
    for turns, why in [
        # LLaMA-Factory's function formatter json.loads the call: a bare text stops its run
        ([msg("user", "a"), msg("function_call", "get_weather(city=Paris)"), msg("tool", "r"), msg("assistant", "b")],
         "kept record 2 has a 'function_call' turn that is not JSON with a name and arguments"),
        ([msg("user", "a"), msg("user", "b"), msg("assistant", "c")], "its turn 2 .* has role 'user' where"),
        ([msg("user", "a"), msg("assistant", "b"), msg("system", "s"), msg("user", "c"), msg("assistant", "d")],
         "its turn 3 .* has role 'system'"),
        ([msg("user", "a"), msg("tool", "r"), msg("assistant", "b")], "its turn 2 .* has role 'tool'"),
        ([msg("assistant", "a"), msg("user", "b")], "its turn 1 .* has role 'assistant'"),
        ([msg("user", "a"), msg("assistant", "b"), msg("user", "c")], "kept record 2 ends on a 'user' turn"),
    ]:
        assert re.search(why, unreadable_turn([{"messages": fine[0]}, {"messages": turns}], "messages", tags)), turns


def test_tool_calls_and_tool_lists_get_no_llamafactory_mapping(tmp_path, capsys):
    """An assistant turn with OpenAI tool_calls is scored as the call's JSON, which LLaMA-Factory's
    sharegpt formatting would not read (it reads the content alone): no entry. A tools column of
    tool objects (not a JSON string) would fail its tool formatter: left unmapped, with a warning."""
    from tunesift.io.trainers import unreadable_tools, unreadable_turn

    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
            "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system"}
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                                 "function": {"name": "f", "arguments": "{}"}}]}
    assert "tool_calls" in unreadable_turn([{"messages": [msg("user", "a"), call]}], "messages", tags)
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    assert unreadable_tools([{"tools": json.dumps([tool])}, {}]) is None
    assert "kept record 2 has tools that are not a JSON string" == unreadable_tools([{"tools": "[]"}, {"tools": [tool]}])
    assert "kept record 1 has tools that are not valid JSON" == unreadable_tools([{"tools": "get_weather"}])
    rows = [{"messages": [msg("user", f"q{i}"), msg("assistant", f"a{i}")], "tools": [tool]} for i in range(5)]
    out = tmp_path / "out"
    assert main(["select", str(jsonl(tmp_path / "d.jsonl", rows)), "--method", "random", "--budget", "1.0",
                 "--out", str(out), "-q"]) == 0
    entry = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))[DATASET_NAME]
    assert entry["columns"] == {"messages": "messages"}
    assert "leaves tools unmapped: kept record 1 has tools" in " ".join(capsys.readouterr().err.split())
    as_text = [dict(r, tools=json.dumps([tool])) for r in rows]
    assert main(["select", str(jsonl(tmp_path / "t.jsonl", as_text)), "--method", "random", "--budget", "1.0",
                 "--out", str(tmp_path / "o2"), "-q"]) == 0
    entry = json.loads((tmp_path / "o2" / "dataset_info.json").read_text(encoding="utf-8"))[DATASET_NAME]
    assert entry["columns"] == {"messages": "messages", "tools": "tools"}


@pytest.mark.parametrize("out_format", ["parquet", "hf"])
def test_parquet_and_hf_keep_every_field_any_kept_row_has(tmp_path, out_format):
    """Without an input Arrow schema the columns are the union of the kept rows' fields (null where
    a row lacks one); pyarrow's from_pylist alone takes the first row's, which dropped `input` here
    while dataset_info.json still mapped it."""
    datasets = pytest.importorskip("datasets")
    rows = [{"instruction": "a", "output": "1"}, {"instruction": "b", "input": "x", "output": "2"},
            {"instruction": "c", "input": "y", "system": "s", "output": "3"},
            {"instruction": "d", "output": "4", "extra": {"k": 1}}]
    out = tmp_path / "out"
    assert main(["select", str(jsonl(tmp_path / "d.jsonl", rows)), "--method", "random", "--budget", "4",
                 "--out", str(out), "-q", "--out-format", out_format]) == 0
    entry = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))[DATASET_NAME]
    assert entry["columns"] == {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}
    builder = {".parquet": "parquet", ".arrow": "arrow"}[Path(entry["file_name"]).suffix]
    ds = datasets.load_dataset(builder, data_files=[str(out / entry["file_name"])], split="train",
                               cache_dir=str(tmp_path / "c"))
    got = sorted(ds.to_list(), key=lambda r: r["instruction"])
    assert [r["input"] for r in got] == [None, "x", "y", None] and got[2]["system"] == "s"
    assert got[3]["extra"] == {"k": 1} and got[0]["extra"] is None


def test_a_record_arrow_cannot_write_is_one_line_and_exit_2(tmp_path, capsys):
    rows = [{"instruction": f"q{i}", "output": f"a{i}", "meta": {}} for i in range(3)]
    out = tmp_path / "out"
    assert main(["select", str(jsonl(tmp_path / "d.jsonl", rows)), "--method", "random", "--budget", "2",
                 "--out", str(out), "-q", "--out-format", "parquet"]) == 2
    err = capsys.readouterr().err
    # found before any scoring, named by file and field (an empty object is a struct Parquet cannot store)
    assert "d.jsonl: field 'meta': cannot be written as parquet (Cannot write struct type" in err
    assert "use --out-format jsonl" in err and err.count("\n") == 1
    assert "Traceback" not in err and not out.exists()
