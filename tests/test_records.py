"""The records layer: every input format, every schema, field maps, ids and every input error."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunesift.errors import InputError, OptionError
from tunesift.io.files import input_checksum
from tunesift.io.records import Record, content_id, read_records, records_from_rows
from tunesift.io.schema import FieldMap, detect_schema

ALPACA = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
]


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def expect_error(path, line, fld, *words, fields=None, exc=InputError) -> str:
    """Read `path`, expect an error naming the file, `line` and `fld`; return the message."""
    with pytest.raises(exc) as info:
        read_records(path, fields)
    return check_message(info.value, str(path), line, fld, *words)


def check_message(error, source, line, fld, *words) -> str:
    msg = str(error)
    assert "\n" not in msg and "\r" not in msg, msg
    prefix = f"{source}:{line}: " if line is not None else f"{source}: "
    assert msg.startswith(prefix), msg
    if fld is not None:
        assert msg.startswith(f"{prefix}field '{fld}': "), msg
    else:
        assert "field '" not in msg[len(prefix) : len(prefix) + 7], msg
    for word in words:
        assert word in msg, (word, msg)
    if isinstance(error, InputError):
        assert error.line == line and error.field == fld
    return msg


# --------------------------------------------------------------------------------------------
# Formats


def test_jsonl_alpaca_counts_blank_lines(tmp_path):
    text = "\n" + json.dumps(ALPACA[0]) + "\n   \n" + json.dumps(ALPACA[1]) + "\n\n"
    recs = read_records(write(tmp_path / "d.jsonl", text))
    assert [r.line for r in recs] == [2, 4]
    assert recs[0].prompt == "Add 2 and 3." and recs[0].response == "5"
    assert recs[1].prompt == "Translate to French.\n\ncat" and recs[1].response == "chat"
    assert recs[0].context == () and recs[0].row == ALPACA[0]
    assert all(isinstance(r, Record) for r in recs)


def test_jsonl_crlf_bom_and_no_final_newline(tmp_path):
    text = "\ufeff" + json.dumps(ALPACA[0]) + "\r\n" + json.dumps(ALPACA[1])
    recs = read_records(write(tmp_path / "d.jsonl", text))
    assert [r.response for r in recs] == ["5", "chat"]
    assert [r.line for r in recs] == [1, 2]


def test_ndjson_and_json_holding_json_lines(tmp_path):
    for name in ("d.ndjson", "d.json"):
        recs = read_records(jsonl(tmp_path / name, ALPACA))
        assert [r.response for r in recs] == ["5", "chat"]


def test_json_array_lines_are_element_indexes(tmp_path):
    text = "  \n[\n" + json.dumps(ALPACA[0], indent=2) + ",\n" + json.dumps(ALPACA[1]) + "\n]\n"
    recs = read_records(write(tmp_path / "d.json", text))
    assert [r.line for r in recs] == [1, 2]
    assert recs[1].prompt == "Translate to French.\n\ncat"
    assert recs[0].row == ALPACA[0]


def test_csv_strings_empty_cells_and_multiline_cells(tmp_path):
    text = 'instruction,input,output,id\nAdd 2 and 3.,,5,7\n\n"Say\nhello",,"Hello,\nworld",8\n'
    recs = read_records(write(tmp_path / "d.csv", text))
    assert [r.line for r in recs] == [1, 2]
    assert recs[0].prompt == "Add 2 and 3." and recs[0].response == "5"
    assert recs[0].row == {"instruction": "Add 2 and 3.", "input": "", "output": "5", "id": "7"}
    assert recs[1].prompt == "Say\nhello" and recs[1].response == "Hello,\nworld"
    assert [r.id for r in recs] == ["7", "8"]


def test_csv_long_cell_beyond_default_field_limit(tmp_path):
    before = csv.field_size_limit()
    long = "x" * 300_000
    recs = read_records(write(tmp_path / "d.csv", f"prompt,completion\nhi,{long}\n"))
    assert recs[0].response == long
    assert csv.field_size_limit() == before  # the global limit is restored


def test_parquet_with_chat_structs(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    recs = read_records(path)
    assert [(r.prompt, r.response, r.line) for r in recs] == [("Hi", "Hey", 1), ("2+2?", "4", 2)]
    assert recs[0].row == rows[0]


def test_parquet_null_column_does_not_count_for_detection(tmp_path):
    # A Parquet file merged from two schemas: every row has every column, some null.
    rows = [
        {"messages": None, "prompt": "p1", "completion": "c1", "id": None},
        {"messages": None, "prompt": "p2", "completion": "c2", "id": None},
    ]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    recs = read_records(path)
    assert [r.response for r in recs] == ["c1", "c2"]
    assert recs[0].id == content_id(rows[0])


def test_parquet_with_a_column_named_twice_is_one_clear_line(tmp_path):
    """Arrow's own error spoke of FieldRef matches; to_pylist would keep only one of the two."""
    table = pa.table([pa.array(["q"]), pa.array(["a"]), pa.array(["b"])], names=["instruction", "output", "output"])
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    with pytest.raises(InputError, match=r"d.parquet: the Parquet file names column 'output' twice; only one"):
        read_records(path)


def test_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    datasets.Dataset.from_list(ALPACA).save_to_disk(str(folder))
    recs = read_records(folder)
    assert [(r.prompt, r.response, r.line) for r in recs] == [
        ("Add 2 and 3.", "5", 1),
        ("Translate to French.\n\ncat", "chat", 2),
    ]
    assert recs[0].row == ALPACA[0]
    assert len(input_checksum(folder)) == 64


def test_datasets_dict_folder_uses_train_or_lists_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ALPACA)
    good = tmp_path / "dd"
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(good))
    assert len(read_records(good)) == 2
    bad = tmp_path / "nodd"
    datasets.DatasetDict({"validation": ds, "test": ds}).save_to_disk(str(bad))
    expect_error(bad, None, None, "'train'", "'validation'", "'test'")


def test_gzip_jsonl_and_csv(tmp_path):
    raw = "".join(json.dumps(r) + "\n" for r in ALPACA).encode()
    recs = read_records(write(tmp_path / "d.jsonl.gz", gzip.compress(raw)))
    assert [r.response for r in recs] == ["5", "chat"]
    csv_gz = gzip.compress(b"question,answer\nWhat is 2+2?,4\n")
    assert read_records(write(tmp_path / "d.csv.gz", csv_gz))[0].response == "4"
    expect_error(write(tmp_path / "bad.jsonl.gz", b"not gzip"), None, None, "gzip")


def test_path_may_be_str(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", ALPACA)
    assert read_records(str(path)) == read_records(path)


# --------------------------------------------------------------------------------------------
# Schemas


@pytest.mark.parametrize(
    ("row", "schema", "prompt", "response"),
    [
        ({"instruction": "I", "input": "X", "output": "O"}, "alpaca", "I\n\nX", "O"),
        ({"instruction": "I", "output": "O"}, "alpaca", "I", "O"),
        ({"instruction": "I", "input": None, "output": "O"}, "alpaca", "I", "O"),
        ({"instruction": "I", "input": "  \n", "output": "O"}, "alpaca", "I", "O"),
        ({"prompt": "P", "completion": "C"}, "prompt_completion", "P", "C"),
        ({"prompt": "P", "response": "R"}, "prompt_completion", "P", "R"),
        ({"prompt": "P", "completion": "C", "response": "R"}, "prompt_completion", "P", "C"),
        ({"question": "Q", "answer": "A"}, "question_answer", "Q", "A"),
    ],
)
def test_text_schemas(tmp_path, row, schema, prompt, response):
    assert detect_schema(row) == schema
    [rec] = read_records(jsonl(tmp_path / "d.jsonl", [row]))
    assert (rec.prompt, rec.response, rec.context) == (prompt, response, ())


def test_text_is_kept_exactly(tmp_path):
    row = {"prompt": "  P \n", "completion": "\tC  "}
    [rec] = read_records(jsonl(tmp_path / "d.jsonl", [row]))
    assert (rec.prompt, rec.response) == ("  P \n", "\tC  ")


def test_schema_preference_order():
    both = {"messages": [], "instruction": "i", "output": "o", "prompt": "p", "completion": "c"}
    assert detect_schema(both) == "messages"
    both.pop("messages")
    assert detect_schema(both) == "alpaca"
    assert detect_schema({"prompt": "p", "response": "r", "question": "q", "answer": "a"}) == (
        "prompt_completion"
    )
    assert detect_schema({"conversations": []}) == "sharegpt"
    # Null values do not count.
    assert detect_schema({"messages": None, "question": "q", "answer": "a"}) == "question_answer"


def test_openai_messages_multi_turn_with_system(tmp_path):
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    }
    [rec] = read_records(jsonl(tmp_path / "d.jsonl", [row]))
    assert rec.prompt == "2+2?" and rec.response == "4"
    assert rec.context == (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"))


def test_sharegpt_conversations(tmp_path):
    row = {
        "conversations": [
            {"from": "system", "value": "You are kind."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
            {"from": "human", "value": "Bye"},
            {"from": "gpt", "value": "Goodbye"},
        ]
    }
    [rec] = read_records(jsonl(tmp_path / "d.jsonl", [row]))
    assert (rec.prompt, rec.response) == ("Bye", "Goodbye")
    assert rec.context == (("system", "You are kind."), ("user", "Hi"), ("assistant", "Hello"))


def test_single_turn_chat_and_text_parts(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "A"}]},
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "B"}, {"type": "text", "text": "C"}],
                },
            ]
        },
    ]
    recs = read_records(jsonl(tmp_path / "d.jsonl", rows))
    assert (recs[0].prompt, recs[0].response, recs[0].context) == ("Hi", "Yo", ())
    assert (recs[1].prompt, recs[1].response) == ("A", "B\n\nC")


def test_unknown_schema_lists_fields_and_flags(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [{"text": "t", "label": 1}])
    msg = expect_error(path, 1, None, "unknown schema", "'text'", "'label'")
    for word in (
        "instruction",
        "messages",
        "prompt",
        "question",
        "--prompt-field",
        "--response-field",
    ):
        assert word in msg
    with pytest.raises(InputError, match="'text'"):
        detect_schema({"text": "t"})


def test_every_record_must_fit_the_first_schema(tmp_path):
    rows = [ALPACA[0], {"prompt": "p", "completion": "c"}]
    expect_error(
        jsonl(tmp_path / "d.jsonl", rows),
        2,
        "instruction",
        "missing field (fields found: 'prompt', 'completion')",
        "alpaca",
        "line 1",
    )


# --------------------------------------------------------------------------------------------
# Field maps


def test_fieldmap_custom_fields_and_joined_prompt(tmp_path):
    rows = [
        {"instruction": "Summarize.", "context": "Long text.", "response": "Short."},
        {"instruction": "Say hi.", "context": "", "response": "Hi!"},
        {"instruction": "Say yo.", "context": None, "response": "Yo!"},
    ]
    recs = read_records(
        jsonl(tmp_path / "dolly.jsonl", rows),
        FieldMap(prompt="instruction, context", response="response"),
    )
    assert [r.prompt for r in recs] == ["Summarize.\n\nLong text.", "Say hi.", "Say yo."]
    assert [r.response for r in recs] == ["Short.", "Hi!", "Yo!"]


def test_fieldmap_overrides_detection(tmp_path):
    row = {"instruction": "I", "input": "X", "output": "O", "prompt": "P", "completion": "C"}
    path = jsonl(tmp_path / "d.jsonl", [row])
    [rec] = read_records(path, FieldMap(prompt="prompt", response="completion"))
    assert (rec.prompt, rec.response) == ("P", "C")
    # Only one side given: the other comes from the detected schema (alpaca: output).
    [rec] = read_records(path, FieldMap(prompt="completion"))
    assert (rec.prompt, rec.response) == ("C", "O")
    [rec] = read_records(path, FieldMap(response="prompt"))
    assert (rec.prompt, rec.response) == ("I\n\nX", "P")


def test_fieldmap_one_side_on_unknown_schema(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [{"text": "t", "label": "l"}])
    expect_error(
        path,
        1,
        None,
        "--response-field was given without --prompt-field",
        "'text'",
        fields=FieldMap(response="label"),
    )
    [rec] = read_records(path, FieldMap(prompt="text", response="label"))
    assert (rec.prompt, rec.response) == ("t", "l")


def test_fieldmap_one_side_on_chat_file(tmp_path):
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    with pytest.raises(OptionError, match="chat"):
        read_records(jsonl(tmp_path / "d.jsonl", [row]), FieldMap(prompt="x"))


def test_fieldmap_messages_and_id(tmp_path):
    rows = [
        {"uid": "a", "dialog": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
        {
            "uid": 9,
            "dialog": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}],
        },
    ]
    recs = read_records(jsonl(tmp_path / "d.jsonl", rows), FieldMap(messages="dialog", id="uid"))
    assert [(r.id, r.prompt, r.response) for r in recs] == [("a", "Q", "A"), ("9", "Q2", "A2")]


def test_fieldmap_missing_mapped_fields(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [{"a": "x", "b": "y"}, {"a": "x2"}])
    fm = FieldMap(prompt="a", response="b")
    expect_error(path, 2, "b", "missing", "--prompt-field", fields=fm)
    expect_error(path, 1, "c", "missing", fields=FieldMap(prompt="a,c", response="b"))
    expect_error(path, 1, "dialog", "missing", fields=FieldMap(messages="dialog"))
    expect_error(path, 1, "uid", "missing id", fields=FieldMap(prompt="a", response="b", id="uid"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"messages": "m", "prompt": "p"},
        {"messages": "m", "response": "r"},
        {"prompt": "a,,b"},
        {"prompt": "a,a"},
        {"prompt": " "},
        {"response": ""},
        {"response": "a,b"},
        {"id": "x,y"},
        {"prompt": 3},
    ],
)
def test_fieldmap_bad_options(kwargs):
    with pytest.raises(OptionError) as info:
        FieldMap(**kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"--{next(iter(kwargs))}-field" in msg  # names the CLI flag at fault


def test_fieldmap_normalizes_names():
    fm = FieldMap(prompt=" instruction , input ", response=" output ")
    assert fm.prompt_fields == ("instruction", "input") and fm.response == "output"
    assert FieldMap().prompt_fields == ()


# --------------------------------------------------------------------------------------------
# Ids


def test_ids_from_id_field(tmp_path):
    rows = [dict(ALPACA[0], id="ex-1"), dict(ALPACA[1], id=2)]
    recs = read_records(jsonl(tmp_path / "d.jsonl", rows))
    assert [r.id for r in recs] == ["ex-1", "2"]


def test_content_hash_ids_are_stable_and_suffixed(tmp_path):
    a, b = ALPACA
    rows = [a, b, a, a, b]
    path = jsonl(tmp_path / "d.jsonl", rows)
    recs = read_records(path)
    canon = json.dumps(a, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    ha = hashlib.sha256(canon.encode()).hexdigest()[:16]
    hb = content_id(b)
    assert [r.id for r in recs] == [ha, hb, f"{ha}-2", f"{ha}-3", f"{hb}-2"]
    assert [r.id for r in read_records(path)] == [r.id for r in recs]
    # Key order and ASCII escaping do not change the id.
    reordered = {"output": "5", "input": "", "instruction": "Add 2 and 3."}
    assert content_id(reordered) == ha
    assert (
        content_id({"prompt": "é", "completion": "x"})
        == hashlib.sha256('{"completion":"x","prompt":"é"}'.encode()).hexdigest()[:16]
    )
    # Any change of content changes it.
    assert content_id(dict(a, output="6")) != ha


def test_duplicate_ids_name_both_lines(tmp_path):
    rows = [dict(ALPACA[0], id="x"), dict(ALPACA[1], id="y"), dict(ALPACA[1], id="x")]
    expect_error(jsonl(tmp_path / "d.jsonl", rows), 3, "id", "duplicate id 'x'", "line 1")
    # An int and a string with the same text are the same id.
    rows = [dict(ALPACA[0], id=1), dict(ALPACA[1], id="1")]
    expect_error(jsonl(tmp_path / "e.jsonl", rows), 2, "id", "duplicate id '1'", "line 1")


def test_duplicate_ids_in_csv_name_rows(tmp_path):
    path = write(tmp_path / "d.csv", "id,question,answer\n1,a,b\n2,c,d\n1,e,f\n")
    expect_error(path, 3, "id", "duplicate id '1'", "row 1", "file line 4")


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"id": 1.5}, ("expected a string or integer id", "number")),
        ({"id": True}, ("boolean",)),
        ({"id": ["a"]}, ("array",)),
        ({"id": ""}, ("empty",)),
        ({"id": None}, ("missing id",)),
        ({}, ("missing id", "line 1")),
    ],
)
def test_bad_ids(tmp_path, bad, words):
    second = {k: v for k, v in ALPACA[1].items()} | bad
    rows = [dict(ALPACA[0], id="a"), second]
    expect_error(jsonl(tmp_path / "d.jsonl", rows), 2, "id", *words)


# --------------------------------------------------------------------------------------------
# Errors: files


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.jsonl", None, None, "no such file")


def test_unreadable_file(tmp_path, monkeypatch):
    path = jsonl(tmp_path / "d.jsonl", ALPACA)

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    expect_error(path, None, None, "cannot read the file: Permission denied")


def test_unreadable_file_for_real(tmp_path):
    if os.name != "posix" or os.geteuid() == 0:
        pytest.skip("root can read any file")
    path = jsonl(tmp_path / "d.jsonl", ALPACA)
    path.chmod(0)
    try:
        expect_error(path, None, None, "cannot read")
    finally:
        path.chmod(0o644)


def test_directory_that_is_not_a_dataset(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    jsonl(folder / "d.jsonl", ALPACA)
    expect_error(folder, None, None, "not a Hugging Face dataset", "dataset_info.json")


def test_broken_dataset_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write(folder / "state.json", "{not json")
    expect_error(folder, None, None, "cannot load the Hugging Face dataset")


def test_unsupported_extension(tmp_path):
    expect_error(write(tmp_path / "d.txt", "x"), None, None, ".txt", ".jsonl", ".parquet")
    expect_error(write(tmp_path / "d.parquet.gz", b"x"), None, None, "gzip")


def test_invalid_parquet(tmp_path):
    expect_error(write(tmp_path / "d.parquet", b"not parquet"), None, None, "Parquet")


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("d.jsonl", "", ("empty",)),
        ("d.jsonl", "\n  \n\n", ("only blank lines",)),
        ("d.json", " [ ] ", ("array is empty",)),
        ("d.csv", "instruction,output\n", ("no data rows",)),
        ("d.csv", "instruction,output\n\n\n", ("no data rows",)),
        ("d.csv", "", ("empty",)),
        ("d.json", "\n", ("only blank lines",)),
    ],
)
def test_empty_inputs(tmp_path, name, text, words):
    expect_error(write(tmp_path / name, text), None, None, "no records", *words)


def test_a_parquet_input_never_aborts_the_exit(tmp_path):
    """pyarrow released a buffer wrapping the file's Python bytes on a scanner thread during the
    interpreter's exit; with torch imported that aborted about every other process (exit 134, not
    the CLI's own code). The reader now hands Arrow its own copy: every exit is the one asked for."""
    import subprocess
    import sys

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"instruction": ["a", "b", "c"], "output": ["1", "2", "3"]}), path)
    script = ("import sys, torch; from tunesift.io.records import read_records; "
              f"assert len(read_records({str(path)!r})) == 3; sys.exit(2)")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
            for _ in range(8)]
    assert [r.returncode for r in runs] == [2] * 8, [r.stderr[-300:] for r in runs]


def test_empty_parquet_and_rows(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    expect_error(path, None, None, "no records")
    with pytest.raises(InputError, match="^<rows>: no records"):
        records_from_rows([])


# --------------------------------------------------------------------------------------------
# Errors: JSON and encoding


def test_invalid_json_line(tmp_path):
    text = json.dumps(ALPACA[0]) + "\n\n" + '{"instruction": "x", "output": }\n'
    expect_error(
        write(tmp_path / "d.jsonl", text), 3, None, "invalid JSON", "Expecting value", "column"
    )


def test_two_objects_on_one_line(tmp_path):
    text = json.dumps(ALPACA[0]) + " " + json.dumps(ALPACA[1]) + "\n"
    expect_error(write(tmp_path / "d.jsonl", text), 1, None, "invalid JSON", "Extra data")


def test_pretty_printed_jsonl_gets_a_hint(tmp_path):
    text = json.dumps(ALPACA[0], indent=2) + "\n"
    expect_error(write(tmp_path / "d.jsonl", text), 1, None, "invalid JSON", "pretty-printed")


def test_json_file_with_a_single_object(tmp_path):
    text = json.dumps({"data": ALPACA}, indent=2)
    expect_error(write(tmp_path / "d.json", text), None, None, "single JSON object", "'data'")


@pytest.mark.parametrize(
    ("value", "kind"), [([1, 2], "an array"), ("s", "a string"), (3, "a number"), (None, "a null")]
)
def test_line_that_is_not_an_object(tmp_path, value, kind):
    text = json.dumps(ALPACA[0]) + "\n" + json.dumps(value) + "\n"
    expect_error(write(tmp_path / "d.jsonl", text), 2, None, f"expected a JSON object, got {kind}")


def test_jsonl_holding_an_array_hints_at_json(tmp_path):
    text = json.dumps(ALPACA) + "\n"
    expect_error(write(tmp_path / "d.jsonl", text), 1, None, "got an array", ".json")


def test_json_array_element_not_an_object(tmp_path):
    text = "[\n" + json.dumps(ALPACA[0]) + ",\n" + json.dumps(ALPACA[1]) + ",\n  42\n]"
    expect_error(
        write(tmp_path / "d.json", text), 3, None, "got a number", "element 3", "file line 4"
    )


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('[{"prompt": "p", "completion": "c"},\n]', 2, ("Expecting value",)),
        ('[{"prompt": "p", "completion": "c"}\n{"prompt": "q"}]', 2, ("delimiter",)),
        ('[{"prompt": "p", "completion": "c"}\n\n', 3, ("unterminated",)),
        ('[{"prompt": "p", "completion": "c"}]\n[1]', 2, ("Extra data",)),
        ("[]\n{}", 2, ("Extra data",)),
        ('[\n{"prompt": "p",\n "completion": c}]', 3, ("Expecting value",)),
    ],
)
def test_json_array_syntax_errors_name_the_file_line(tmp_path, text, line, words):
    expect_error(write(tmp_path / "d.json", text), line, None, "invalid JSON", *words)


def test_json_array_errors_in_records_name_element_and_file_line(tmp_path):
    text = "[\n" + json.dumps(ALPACA[0]) + ",\n\n" + json.dumps({"instruction": "x", "output": ""})
    expect_error(
        write(tmp_path / "d.json", text + "]"), 2, "output", "empty", "element 2", "file line 4"
    )


def test_non_utf8_bytes_report_line_and_column(tmp_path):
    good = json.dumps(ALPACA[0]).encode()
    data = good + b"\n" + good + b"\n" + b'{"instruction": "caf\xe9", "output": "x"}\n'
    expect_error(write(tmp_path / "d.jsonl", data), 3, None, "not valid UTF-8", "0xe9", "column 21")
    csv_data = b"question,answer\nq,a\nq2,\xff\n"
    expect_error(write(tmp_path / "d.csv", csv_data), 3, None, "not valid UTF-8", "0xff")


def test_utf16_file(tmp_path):
    data = (json.dumps(ALPACA[0]) + "\n").encode("utf-16")
    expect_error(write(tmp_path / "d.jsonl", data), 1, None, "UTF-16")


# --------------------------------------------------------------------------------------------
# Errors: fields


@pytest.mark.parametrize(
    ("bad", "fld", "words"),
    [
        ({"instruction": "i"}, "output", ("missing", "alpaca")),
        ({"output": "o", "input": "x"}, "instruction", ("missing",)),
        ({"instruction": "i", "output": ""}, "output", ("response is empty",)),
        ({"instruction": "i", "output": " \n\t "}, "output", ("whitespace-only",)),
        ({"instruction": "", "output": "o"}, "instruction", ("prompt is empty",)),
        ({"instruction": "  ", "input": "x", "output": "o"}, "instruction", ("prompt is empty",)),
        ({"instruction": "i", "output": 5}, "output", ("expected a string, got a number", "5")),
        ({"instruction": "i", "output": ["a"]}, "output", ("got an array",)),
        ({"instruction": {"a": 1}, "output": "o"}, "instruction", ("got an object",)),
        ({"instruction": "i", "output": None}, "output", ("null",)),
        ({"instruction": "i", "input": 3, "output": "o"}, "input", ("got a number",)),
    ],
)
def test_alpaca_field_errors(tmp_path, bad, fld, words):
    rows = [ALPACA[0], ALPACA[1], bad]
    expect_error(jsonl(tmp_path / "d.jsonl", rows), 3, fld, *words)


def test_a_number_past_float_s_range_is_named_a_number(tmp_path):
    """JSON's 1e400 reads as a Decimal: the message said "got a Decimal" where the errors table says "a number"."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ALPACA[0]) + '\n{"instruction": "i", "output": 1e400}\n', encoding="utf-8")
    msg = expect_error(path, 2, "output", "expected a string, got a number")
    assert "Decimal" not in msg.split("got a number")[0]


@pytest.mark.parametrize(
    ("rows", "fld"),
    [
        ([{"prompt": "p", "completion": "c"}, {"prompt": "p", "response": "r"}], "completion"),
        ([{"question": "q", "answer": "a"}, {"question": "q", "answer": 4}], "answer"),
        ([{"question": "q", "answer": "a"}, {"question": "", "answer": "a"}], "question"),
    ],
)
def test_other_schema_field_errors(tmp_path, rows, fld):
    expect_error(jsonl(tmp_path / "d.jsonl", rows), 2, fld)


def test_field_errors_in_csv_name_row_and_file_line(tmp_path):
    path = write(tmp_path / "d.csv", 'instruction,input,output\n"a\nb",,x\nc,,\n')
    expect_error(path, 2, "output", "response is empty", "row 2", "file line 4")


def test_field_errors_in_parquet_name_row(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"question": "q", "answer": "a"}, {"question": "q", "answer": None}]),
        path,
    )
    expect_error(path, 2, "answer", "null", "row 2")


U, A, S = "user", "assistant", "system"


def chat(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


@pytest.mark.parametrize(
    ("bad", "fld", "words"),
    [
        ({"messages": "hi"}, "messages", ("expected a list", "string")),
        ({"messages": None, "instruction": "i", "output": "o"}, "messages", ("null",)),
        ({"messages": []}, "messages", ("no turns",)),
        ({"messages": ["hi"]}, "messages[0]", ("turn object",)),
        ({"messages": [{"content": "x"}]}, "messages[0]", ("no 'role'",)),
        ({"messages": [{"role": U}]}, "messages[0].content", ("no content",)),
        ({"messages": [{"role": 1, "content": "x"}]}, "messages[0].role", ("got a number",)),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", ("'bot'",)),
        ({"messages": [{"role": U, "content": 7}]}, "messages[0].content", ("got a number",)),
        ({"messages": [{"role": U, "content": None}]}, "messages[0].content", ("null",)),
        (
            {"messages": [{"role": U, "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
            ("'image_url'",),
        ),
        (chat((U, "a")), "messages", ("no assistant turn",)),
        (chat((S, "s"), (U, "a")), "messages", ("no assistant turn",)),
        (chat((U, "a"), (A, "b"), (U, "c")), "messages[2]", ("after the last assistant",)),
        (chat((A, "b")), "messages[0]", ("no user turn before",)),
        (chat((U, "a"), (S, "s"), (A, "b")), "messages[1]", ("'system'", "user turn")),
        (chat((U, "a"), (A, "b"), (A, "c")), "messages[1]", ("'assistant'",)),
        (chat((U, " "), (A, "b")), "messages[0]", ("prompt", "empty")),
        (chat((U, "a"), (A, "")), "messages[1]", ("response", "empty")),
        (chat((U, "a"), (A, "\n ")), "messages[1]", ("whitespace-only",)),
    ],
)
def test_chat_errors(tmp_path, bad, fld, words):
    rows = [chat((U, "ok"), (A, "fine")), bad]
    expect_error(jsonl(tmp_path / "d.jsonl", rows), 2, fld, *words)


def test_sharegpt_errors_name_from_and_value(tmp_path):
    first = {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}
    bad = {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt"}]}
    expect_error(
        jsonl(tmp_path / "d.jsonl", [first, bad]), 2, "conversations[1].value", "no content"
    )
    bad = {"conversations": [{"from": "robot", "value": "a"}, {"from": "gpt", "value": "b"}]}
    expect_error(
        jsonl(tmp_path / "e.jsonl", [first, bad]),
        2,
        "conversations[0].from",
        "'robot'",
        "human",
        "gpt",
    )


def test_empty_context_turns_are_allowed(tmp_path):
    [rec] = read_records(jsonl(tmp_path / "d.jsonl", [chat((S, ""), (U, "a"), (A, "b"))]))
    assert rec.context == (("system", ""),)


# --------------------------------------------------------------------------------------------
# Errors: CSV


def test_csv_ragged_row(tmp_path):
    path = write(tmp_path / "d.csv", "instruction,input,output\na,,b\nc,d\n")
    expect_error(path, 2, None, "ragged", "2 cells", "header has 3", "row 2", "file line 3")
    path = write(tmp_path / "e.csv", "instruction,input,output\na,,b,extra\n")
    expect_error(path, 1, None, "4 cells")


def test_csv_duplicate_header(tmp_path):
    path = write(tmp_path / "d.csv", "prompt,completion,prompt\na,b,c\n")
    expect_error(path, 1, None, "header", "'prompt'", "twice")


def test_csv_malformed(tmp_path):
    # An unclosed quote would otherwise swallow the rest of the file into one cell.
    path = write(tmp_path / "d.csv", 'prompt,completion\na,b\nc,"d\ne,f\ng,h\n')
    expect_error(path, 2, None, "malformed CSV", "never closed", "file line 3")
    path = write(tmp_path / "e.csv", 'prompt,completion\na,"b"c\n')
    expect_error(path, 1, None, "malformed CSV", "file line 2")


# --------------------------------------------------------------------------------------------
# records_from_rows


def test_records_from_rows_keeps_the_dicts():
    rows = [dict(r) for r in ALPACA]
    recs = records_from_rows(rows)
    assert [r.line for r in recs] == [1, 2]
    assert recs[0].row is rows[0]
    assert rows == ALPACA
    assert recs == read_records_like(rows)


def read_records_like(rows):
    return records_from_rows(iter(rows))


def test_records_from_rows_errors_name_source_and_row():
    rows = [ALPACA[0], {"instruction": "x", "output": ""}]
    with pytest.raises(InputError) as info:
        records_from_rows(rows, source="train_set")
    check_message(info.value, "train_set", 2, "output", "empty", "row 2")
    with pytest.raises(InputError) as info:
        records_from_rows([ALPACA[0], ["x"]])
    check_message(info.value, "<rows>", 2, None, "expected a row (dict)", "array")
    with pytest.raises(InputError) as info:
        records_from_rows(ALPACA[0])
    check_message(info.value, "<rows>", None, None, "single object")


def test_records_from_rows_pandas_and_datasets():
    pd = pytest.importorskip("pandas")
    datasets = pytest.importorskip("datasets")
    df = pd.DataFrame(ALPACA)
    assert [r.prompt for r in records_from_rows(df)] == [
        r.prompt for r in records_from_rows(df.to_dict("records"))
    ]
    ds = datasets.Dataset.from_list(ALPACA)
    recs = records_from_rows(ds, FieldMap(prompt="instruction", response="output"))
    assert [r.prompt for r in recs] == ["Add 2 and 3.", "Translate to French."]
    recs = records_from_rows(datasets.DatasetDict({"train": ds}))
    assert len(recs) == 2
    with pytest.raises(InputError, match="'test'"):
        records_from_rows(datasets.DatasetDict({"test": ds}))


def test_records_are_frozen_and_hashable(tmp_path):
    [rec] = records_from_rows([ALPACA[0]])
    with pytest.raises(AttributeError):
        rec.prompt = "x"  # type: ignore[misc]
    assert hash(rec) == hash(records_from_rows([dict(ALPACA[0])])[0])


def test_fields_argument_must_be_a_fieldmap(tmp_path):
    with pytest.raises(OptionError):
        read_records(jsonl(tmp_path / "d.jsonl", ALPACA), {"prompt": "x"})  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# input_checksum


def test_input_checksum_of_a_file(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", ALPACA)
    assert input_checksum(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert input_checksum(str(path)) == input_checksum(path)


def test_input_checksum_of_a_folder(tmp_path):
    folder = tmp_path / "ds"
    (folder / "sub").mkdir(parents=True)
    write(folder / "b.arrow", b"bbb")
    write(folder / "a.json", b"{}")
    write(folder / "sub" / "c.arrow", b"c")
    first = input_checksum(folder)
    h = hashlib.sha256()
    for rel, data in [("a.json", b"{}"), ("b.arrow", b"bbb"), ("sub/c.arrow", b"c")]:
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    assert first == h.hexdigest()
    # Caches and dot-files are not data; contents and names are.
    write(folder / "cache-123.arrow", b"x")
    write(folder / ".lock", b"x")
    assert input_checksum(folder) == first
    write(folder / "b.arrow", b"bbB")
    assert input_checksum(folder) != first
    write(folder / "b.arrow", b"bbb")
    (folder / "b.arrow").rename(folder / "d.arrow")
    assert input_checksum(folder) != first


def test_input_checksum_missing(tmp_path):
    with pytest.raises(InputError) as info:
        input_checksum(tmp_path / "nope.jsonl")
    check_message(info.value, str(tmp_path / "nope.jsonl"), None, None, "no such file")


def test_unknown_schema_hints_at_nested_records(tmp_path):
    path = write(tmp_path / "d.json", json.dumps({"data": ALPACA}))
    expect_error(path, 1, None, "unknown schema", "'data' holds a list of objects")


def test_bom_only_file_is_empty(tmp_path):
    expect_error(write(tmp_path / "d.jsonl", b"\xef\xbb\xbf\n"), None, None, "no records")


def test_ragged_row_with_one_cell(tmp_path):
    path = write(tmp_path / "d.csv", "prompt,completion\na,b\nc\n")
    expect_error(path, 2, None, "1 cell but the header has 2")


def test_rows_with_unhashable_keys(tmp_path):
    with pytest.raises(InputError) as info:
        records_from_rows([{"prompt": "p", "completion": "c", 1: "x"}])
    check_message(info.value, "<rows>", 1, None, "cannot hash")


def test_schema_mismatch_in_rows_names_rows():
    with pytest.raises(InputError) as info:
        records_from_rows([ALPACA[0], {"instruction": "x"}], source="mem")
    check_message(info.value, "mem", 2, "output", "first record (row 1)", "(row 2)")


def test_deeply_nested_json_line(tmp_path):
    text = json.dumps(ALPACA[0]) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n"
    expect_error(write(tmp_path / "d.jsonl", text), 2, None, "invalid JSON", "nested too deeply")


@pytest.mark.parametrize("name, text, message", [
    ("big.jsonl", '{"prompt": "a", "completion": "b", "x": 1' + "0" * 5000 + "}\n", "big.jsonl:1: invalid JSON: "),
    ("big.json", '[{"prompt": "a", "completion": "b", "x": 1' + "0" * 5000 + "}]", "big.json:1: invalid JSON: "),
    ("both.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": "b2", "completion": "c"}\n',
     "both.jsonl:2: field 'completion': the record holds both 'completion' and 'response'"),
    ("blank.csv", 'prompt,completion\n"a",c\n"  "\n', "blank.csv:2: ragged CSV row: 1 cell but the header has 2"),
])
def test_inputs_that_crashed_or_lost_data_are_one_line_errors(name, text, message, tmp_path):
    """An integer of over 4,300 digits escaped as a bare ValueError (a traceback); a later record's
    completion was dropped for the first record's response; a quoted blank CSV cell vanished."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as exc:
        read_records(path)
    assert str(exc.value).startswith(str(tmp_path / message.split(":")[0])) and message.split(":", 1)[1] in str(exc.value)


def test_spaces_only_csv_lines_are_still_blank_lines(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\n"a",c\n   \n\n"b",d\n')
    assert [r.prompt for r in read_records(path)] == ["a", "b"]


def test_tool_call_arguments_nested_or_long_past_pythons_limits_are_kept_as_text(tmp_path):
    deep = "[" * 995 + "]" * 995
    for args in (deep, "1" + "0" * 5000):
        row = {"messages": [{"role": "user", "content": "q"},
                            {"role": "assistant", "content": "a", "tool_calls": [
                                {"type": "function", "function": {"name": "f", "arguments": args}}]}]}
        (rec,) = records_from_rows([row])
        assert args[:50] in rec.response


def test_a_dataframes_missing_cells_are_no_field_but_nan_inside_a_list_is_kept():
    import math

    import pandas as pd

    df = pd.DataFrame([{"prompt": "a", "completion": "b", "score": float("nan"), "v": [1.0, float("nan")]}])
    (rec,) = records_from_rows(df)
    assert "score" not in rec.row and rec.row["v"][0] == 1.0 and math.isnan(rec.row["v"][1])


@pytest.mark.parametrize("first, field", [({"prompt": "q0", "completion": None}, "completion"),
                                          ({"prompt": [{"role": "user", "content": "q0"}], "completion": None},
                                           "completion")])
def test_a_null_completion_in_the_first_record_is_that_records_defect_only(tmp_path, first, field):
    """The response field was chosen from the first record's value: a null there read the file
    as prompt/response, so record 1 lacked 'response' and every later record 'held both'."""
    later = [{**first, "completion": "a1" if isinstance(first["prompt"], str) else [{"role": "assistant",
                                                                                      "content": "a1"}]}] * 3
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [first, *later]))
    with pytest.raises(InputError) as exc:
        read_records(path)
    assert str(exc.value).startswith(f"{path}:1: field '{field}'") and "both" not in str(exc.value)
    records = read_records(path, on_error="skip")
    assert [r.error is None for r in records] == [False, True, True, True]
    assert records[1].response == "a1"


def test_tool_call_arguments_with_exact_decimals_dates_or_bytes_are_written_as_the_output_writes_them(tmp_path):
    """A float the reader keeps exact (a Decimal), or a Parquet date or bytes value, made every such
    record "cannot write the tool call as JSON"."""
    import datetime as dt

    path = tmp_path / "calls.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "where?"}, {"role": "assistant", "tool_calls": '
                    '[{"type": "function", "function": {"name": "f", "arguments": {"lat": 37.77492950000000000001}}}]}]}\n')
    (rec,) = read_records(path)
    assert json.loads(rec.response) == {"name": "f", "arguments": {"lat": 37.7749295}}
    assert '"lat": 37.77492950000000000001' in rec.response  # its digits, as written in the file
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
        {"function": {"name": "g", "arguments": {"day": dt.date(2026, 12, 1), "blob": b"\x00\x01"}}}]}]}
    (rec,) = records_from_rows([row])
    assert json.loads(rec.response)["arguments"] == {"day": {"$date": "2026-12-01"}, "blob": {"$bytes": "AAE="}}


def test_json_lines_output_escapes_unicode_line_separators():
    """str.splitlines() splits at U+2028, U+2029 and U+0085: unescaped inside a string, a reader
    using it cut a selected record in two."""
    from tunesift.io.json_values import json_line

    row = {"text": "a\u2028b\u2029c\x85d", "k\u2028": 1}
    line = json_line(row)
    assert len(line.splitlines()) == 1 and json.loads(line) == row


def test_ids_after_a_first_record_without_one_are_named_and_an_empty_csv_id_says_how_to_go_on(tmp_path, caplog):
    import logging

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"id": None, "prompt": "a", "completion": "b"},
                                                          {"id": "r2", "prompt": "c", "completion": "d"}]))
    with caplog.at_level(logging.WARNING, logger="tunesift"):
        records = read_records(path)
    assert records[1].id != "r2" and len(records[1].id) == 16  # content ids, as before, but not in silence
    assert "line 2 has an 'id' but the first record (line 1) has none" in caplog.text
    assert "--id-field id" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tunesift"):
        read_records(path, FieldMap(id="none"))  # asked for: no warning
    assert "has an 'id'" not in caplog.text
    csv = tmp_path / "d.csv"
    csv.write_text("id,prompt,completion,history\n,a,b,\n")
    with pytest.raises(InputError, match=r"d\.csv:1: field 'id': the id is empty; .*--id-field none.*file line 2"):
        read_records(csv)
    # a CSV's empty history cell is no history (it read as "a string, not a list of pairs")
    alpaca = tmp_path / "a.csv"
    alpaca.write_text("instruction,input,output,history\nSay hi.,,Hi.,\n")
    (rec,) = read_records(alpaca)
    assert rec.prompt == "Say hi." and rec.context == ()


def test_openai_developer_turns_are_system_turns():
    row = {"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "4"}]}
    (rec,) = records_from_rows([row])
    assert rec.context == (("system", "Be brief."),) and rec.prompt == "2+2?"
