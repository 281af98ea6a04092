"""Every bad input of docs/errors.md: one line on stderr naming what and where, exit code 2,
and no output folder left behind."""

import decimal
import json

import pytest

from tunesift.cli import main
from tunesift.methods.catalogue import method_names

GOOD = [{"instruction": f"Say {i}.", "output": f"{i}"} for i in range(6)]


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


# (case id, input file name, input content (str or bytes), extra CLI args, expected text in the error)
CASES = [
    ("empty-file", "d.jsonl", "", [], "no records"),
    ("blank-lines-only", "d.jsonl", "\n\n  \n", [], "no records"),
    ("invalid-json-line-3", "d.jsonl", jsonl(GOOD[:2]) + '{"instruction": "x", "output": \n', [], "d.jsonl:3"),
    ("line-not-an-object", "d.jsonl", jsonl(GOOD[:1]) + "[1, 2]\n", [], "d.jsonl:2"),
    ("missing-response", "d.jsonl", jsonl(GOOD[:1] + [{"instruction": "x"}]), [], "d.jsonl:2"),
    ("empty-response", "d.jsonl", jsonl(GOOD[:1] + [{"instruction": "x", "output": "  "}]), [], "field 'output'"),
    ("empty-prompt", "d.jsonl", jsonl(GOOD[:1] + [{"instruction": "", "output": "y"}]), [], "field 'instruction'"),
    ("wrong-type", "d.jsonl", jsonl(GOOD[:1] + [{"instruction": "x", "output": 42}]), [], "field 'output'"),
    ("non-utf8", "d.jsonl", jsonl(GOOD[:1]).encode() + b'{"instruction": "caf\xe9", "output": "y"}\n', [], "d.jsonl:2"),
    ("duplicated-ids", "d.jsonl", jsonl([{"id": "a", **GOOD[0]}, {"id": "b", **GOOD[1]}, {"id": "a", **GOOD[2]}]), [],
     "d.jsonl:3"),
    ("unknown-schema", "d.jsonl", jsonl([{"foo": "x", "bar": "y"}]), [], "--prompt-field"),
    ("chat-without-assistant", "d.jsonl", jsonl([{"messages": [{"role": "user", "content": "hi"}]}]), [], "assistant"),
    ("chat-turn-without-content", "d.jsonl",
     jsonl([{"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}]), [], "d.jsonl:1"),
    ("csv-ragged-row", "d.csv", "instruction,output\na,b\nc,d,e\n", [], "d.csv"),
    ("csv-blank-first-line", "d.csv", "\ninstruction,output\na,b\n", [], "d.csv:1: the first line is blank"),
    ("nested-too-deeply", "d.jsonl", jsonl(GOOD[:2]) + json.dumps({**GOOD[2], "meta": json.loads("[" * 150 + "]" * 150)})
     + "\n", [], "d.jsonl:3: the row is nested 151 levels deep; tunesift reads at most 100"),
    ("non-utf8-column-in-characters", "d.jsonl", b'{"instruction": "x", "output": "' + "\u00e9\u00e9".encode() +
     b'\xff"}\n', [], "byte 0xff at column 35"),  # 32 + 2 characters before it (36 bytes)
    ("json-array-element-not-object", "d.json", json.dumps([GOOD[0], "oops"]), [], "d.json"),
    ("duplicate-json-key", "d.jsonl", jsonl(GOOD[:1]) + '{"instruction": "x", "output": "a", "output": "b"}\n', [],
     "d.jsonl:2: a JSON object names the key 'output' twice"),
    ("duplicate-key-in-json-array", "d.json", '[{"instruction": "x",\n "meta": {"k": 1, "k": 2}, "output": "y"}]', [],
     "names the key 'k' twice"),
    ("mapped-field-missing", "d.jsonl", jsonl(GOOD), ["--prompt-field", "question"], "question"),
    ("missing-file", None, None, [], "nope.jsonl"),
    ("budget-zero", "d.jsonl", jsonl(GOOD), ["--budget", "0"], "budget count must be at least 1"),
    ("budget-above-one", "d.jsonl", jsonl(GOOD), ["--budget", "1.5"], "budget fraction must be in (0, 1]"),
    ("budget-above-n", "d.jsonl", jsonl(GOOD), ["--budget", "7"], "larger than the 6 input records"),
    ("unknown-method", "d.jsonl", jsonl(GOOD), ["--method", "magic"],
     f"unknown method 'magic': use one of {', '.join(method_names())}"),
    ("unknown-stage", "d.jsonl", jsonl(GOOD), ["--method", "delift", "--stage", "final"], "unknown stage 'final'"),
    ("task-without-target", "d.jsonl", jsonl(GOOD), ["--method", "delift", "--stage", "task"], "needs a target set"),
    ("continual-without-existing", "d.jsonl", jsonl(GOOD), ["--method", "delift", "--stage", "continual"],
     "needs the existing data"),
    ("bad-target-file", "d.jsonl", jsonl(GOOD), ["--method", "delift-se", "--stage", "task", "--target", "TARGET"],
     "target.jsonl:1"),
    ("model-not-found-offline", "d.jsonl", jsonl(GOOD), ["--method", "donod", "--model", "no-such-org/no-such-model"],
     "cannot load model 'no-such-org/no-such-model' offline"),
    ("record-longer-than-context", "d.jsonl", jsonl(GOOD[:1] + [{"instruction": "x", "output": "word " * 300}]),
     ["--method", "donod", "--model", "TINY", "--max-length", "64"], "does not fit max_length 64"),
    ("output-is-a-file", "d.jsonl", jsonl(GOOD), ["--out", "BLOCKER"], "not a folder"),
    ("target-without-task-stage", "d.jsonl", jsonl(GOOD), ["--method", "delift", "--target", "GOODTARGET"],
     "--target is used only by --method delift/delift-se/donod+delift/less/rds --stage task"),
    ("negative-nu", "d.jsonl", jsonl(GOOD), ["--method", "delift", "--stage", "continual", "--existing",
                                             "GOODTARGET", "--nu", "-1"], "nu must be a finite number >= 0"),
    ("negative-seed", "d.jsonl", jsonl(GOOD), ["--seed", "-1"], "seed must be an integer >= 0"),
    # issue 15: every option checked before any work, messages that say what is wrong
    ("weights-nan", "d.jsonl", jsonl(GOOD), ["--method", "donod", "--model", "no-such/model", "--weights", "nan,0.5"],
     "weights must be two finite non-negative numbers"),
    ("unknown-device", "d.jsonl", jsonl(GOOD), ["--device", "tpu"], "unknown device 'tpu'"),
    ("unknown-dtype", "d.jsonl", jsonl(GOOD), ["--dtype", "int8"], "unknown dtype 'int8'"),
    ("budget-exponent", "d.jsonl", jsonl(GOOD), ["--budget", "1e1"], "a count is written as a whole number, e.g. 10"),
    ("unknown-out-format", "d.jsonl", jsonl(GOOD), ["--out-format", "xml"], "unknown out-format 'xml'"),
    ("mixed-types-to-parquet", "d.jsonl", jsonl([{**r, "n": i} for i, r in enumerate(GOOD[:3])] +
                                              [{**GOOD[3], "n": "four"}]), ["--out-format", "parquet"],
     "d.jsonl:4: field 'n': cannot be written as parquet"),
    ("text-part-without-text", "d.jsonl", jsonl([{"messages": [{"role": "user", "content": "hi"}, {
        "role": "assistant", "content": [{"type": "text"}]}]}]), [], "needs a 'text' string"),
    ("empty-content-list", "d.jsonl", jsonl([{"messages": [{"role": "user", "content": []}, {
        "role": "assistant", "content": "a"}]}]), [], "the content is an empty list"),
    ("lone-surrogate-in-response", "d.jsonl", jsonl(GOOD[:1]) + '{"instruction": "x", "output": "y\\ud800"}\n', [],
     "lone surrogate"),
    ("several-record-defects", "d.jsonl", jsonl(GOOD[:2] + [{"instruction": "x", "output": ""}] * 2
                                                + [{"instruction": "x", "output": None}] + GOOD[2:]), [],
     "3 of 9 records cannot be used"),
    ("skip-with-every-record-unusable", "d.jsonl", jsonl([{"instruction": "x", "output": "word " * 300}] * 2),
     ["--method", "donod", "--model", "TINY", "--max-length", "64", "--on-error", "skip", "--cache-dir", "CACHE"],
     "none of the 2 records can be used"),
    ("input-path-too-long", "a" * 300 + ".jsonl", None, [], "File name too long"),
    ("non-utf8-config", "d.jsonl", jsonl(GOOD), ["--config", "BADCONFIG"], "not valid UTF-8"),
    # issue 15: outputs never land where they are not meant to, and the cache is checked up front
    ("out-under-proc", "d.jsonl", jsonl(GOOD), ["--out", "/proc/tunesift-out"], "cannot write in '/proc'"),
    ("out-dangling-symlink", "d.jsonl", jsonl(GOOD), ["--out", "DANGLING"], "symlink to a missing folder"),
    ("out-holds-other-files", "d.jsonl", jsonl(GOOD), ["--out", "NOTOURS"], "holds files tunesift did not write"),
    ("out-not-a-tunesift-output", "d.jsonl", jsonl(GOOD), ["--out", "FOREIGNSET"], "is not an earlier tunesift output"),
    ("cache-dir-is-a-file", "d.jsonl", jsonl(GOOD), ["--method", "donod", "--model", "TINY", "--cache-dir",
                                                     "BLOCKER"], "exists and is not a folder"),
]


@pytest.mark.parametrize("case,name,content,extra,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, name, content, extra, message, tmp_path, tiny_dir, capsys):
    data = tmp_path / (name or "nope.jsonl")
    if content is not None:
        data.write_bytes(content if isinstance(content, bytes) else content.encode())
    (tmp_path / "target.jsonl").write_text("not json\n")
    (tmp_path / "good_target.jsonl").write_text(jsonl(GOOD[:2]))
    (tmp_path / "blocker").write_text("x")
    (tmp_path / "bad.yaml").write_bytes(b"method: r\xe9ndom\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    (tmp_path / "notours").mkdir()
    (tmp_path / "notours" / "notes.txt").write_text("keep")
    (tmp_path / "foreignset").mkdir()
    (tmp_path / "foreignset" / "manifest.json").write_text('{"project": "mine"}')
    out = tmp_path / "out"
    subs = {"TARGET": str(tmp_path / "target.jsonl"), "TINY": str(tiny_dir), "BLOCKER": str(tmp_path / "blocker"),
            "GOODTARGET": str(tmp_path / "good_target.jsonl"), "BADCONFIG": str(tmp_path / "bad.yaml"),
            "DANGLING": str(tmp_path / "dangling"), "NOTOURS": str(tmp_path / "notours"),
            "FOREIGNSET": str(tmp_path / "foreignset"),
            "CACHE": str(tmp_path / "cache")}
    args = [subs.get(a, a) for a in extra]
    if "--out" not in args:
        args += ["--out", str(out)]
    code = main(["select", str(data), "--method", "random", "-q", *args] if "--method" not in args
                else ["select", str(data), "-q", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tunesift: error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no temp folder left
    assert [p.name for p in (tmp_path / "notours").iterdir()] == ["notes.txt"]
    assert (tmp_path / "foreignset" / "manifest.json").read_text() == '{"project": "mine"}'


def test_cases_are_documented():
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "errors.md").read_text()
    missing = [c[0] for c in CASES if f"`{c[0]}`" not in doc]
    assert not missing, f"docs/errors.md lacks {missing}"
    # each documented message holds the text the test finds in the real one (catches a drifted row)
    rows = {line.split("`")[1]: line for line in doc.splitlines() if line.startswith("| `")}
    drifted = [c[0] for c in CASES if c[4] not in rows[c[0]]]
    assert not drifted, f"docs/errors.md's messages differ from the CLI's for {drifted}"


def test_a_first_record_with_a_null_response_is_that_records_defect(tmp_path, capsys):
    """Only set fields decided the schema, so a null output in the first record made the whole
    file 'unknown schema' (listing the very fields it expected) even under --on-error skip."""
    from tunesift.cli import main

    data = tmp_path / "d.jsonl"
    rows = [{"instruction": "a", "input": "", "output": None}, {"instruction": "b", "input": "", "output": "x"},
            {"instruction": "c", "input": "", "output": "y"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["select", str(data), "--method", "random", "--budget", "1", "--out", str(tmp_path / "o")]) == 2
    assert "d.jsonl:1: field 'output': is null" in capsys.readouterr().err
    assert main(["select", str(data), "--method", "random", "--budget", "1.0", "--out", str(tmp_path / "o"),
                 "--on-error", "skip"]) == 0
    err = capsys.readouterr().err
    assert "more than the 2 that can be used" not in err  # 1.0 is the whole pool: no warning that it shrank


def test_an_empty_tool_calls_list_means_no_calls(tmp_path):
    from tunesift.io.records import read_records

    data = tmp_path / "d.jsonl"
    row = {"messages": [{"role": "user", "content": "hi", "tool_calls": []},
                        {"role": "assistant", "content": "hello", "tool_calls": []}]}
    data.write_text(json.dumps(row) + "\n")
    [rec] = read_records(data)
    assert rec.prompt == "hi" and rec.response == "hello"


def test_a_lone_surrogate_id_that_collides_with_its_escape_is_a_duplicate(tmp_path):
    from tunesift.errors import InputError
    from tunesift.io.records import read_records

    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "\\ud800", "prompt": "a", "response": "b"}\n{"id": "\\\\ud800", "prompt": "c", "response": "d"}\n')
    with pytest.raises(InputError, match=r"d.jsonl:2: field 'id': duplicate id .* already used on line 1 \(the same "
                                         r"once a lone surrogate is written as its escape\)"):
        read_records(data)


def test_json_numbers_are_written_back_with_their_digits(tmp_path):
    """A float that cannot hold a JSON number's value (more digits than a double, beyond its range)
    was rounded or turned into Infinity in selected.jsonl."""
    from tunesift.cli import main

    data = tmp_path / "d.jsonl"
    line = '{"instruction": "a", "output": "b", "x": 3.14159265358979323846, "y": 1e400, "z": 0.1, "v": 2.5}\n'
    data.write_text(line)
    assert main(["select", str(data), "--method", "random", "--budget", "1", "--out", str(tmp_path / "o"), "-q"]) == 0
    got = (tmp_path / "o" / "selected.jsonl").read_text()
    assert '"x": 3.14159265358979323846' in got and '"z": 0.1' in got and '"v": 2.5' in got
    assert decimal.Decimal(json.loads(got, parse_float=decimal.Decimal)["y"]) == decimal.Decimal("1e400")


def test_a_column_of_floats_and_long_decimals_writes_as_float64_parquet(tmp_path, capsys):
    """Numbers a double cannot hold are read as decimals; beside plain floats Arrow refused the
    column ("int or Decimal object expected, got float") and the whole Parquet output failed."""
    import pyarrow.parquet as pq

    from tunesift.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b", "x": 3.14159265358979323846}\n'
                    '{"instruction": "c", "output": "d", "x": 1.5}\n')
    assert main(["select", str(data), "--method", "random", "--budget", "1.0", "--out", str(tmp_path / "o"),
                 "--out-format", "parquet"]) == 0
    col = pq.read_table(tmp_path / "o" / "selected.parquet").column("x").to_pylist()
    assert sorted(col) == [1.5, 3.141592653589793]
    assert "column 'x' holds numbers a double cannot hold" in " ".join(capsys.readouterr().err.split())


def test_id_field_none_reads_records_whose_ids_repeat(tmp_path, capsys):
    """Merged dumps often repeat ids; an id in the first record made ids compulsory and unique,
    with no way out short of editing the file."""
    from tunesift.io.records import read_records
    from tunesift.io.schema import FieldMap

    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "a", "prompt": "p", "response": "r"}\n{"id": "a", "prompt": "q", "response": "s"}\n')
    assert main(["select", str(data), "--method", "random", "--budget", "1", "--out", str(tmp_path / "o")]) == 2
    assert "--id-field none gives every record an id from its content" in capsys.readouterr().err
    recs = read_records(data, FieldMap(id="none"))
    assert len({r.id for r in recs}) == 2 and "a" not in {r.id for r in recs}
    assert main(["select", str(data), "--method", "random", "--budget", "1", "--id-field", "none",
                 "--out", str(tmp_path / "o"), "-q"]) == 0


def test_a_double_written_with_17_digits_stays_a_float():
    """%.17g output (0.10000000000000001 is the double 0.1) was read as a decimal: its category,
    content id and Parquet type changed for an ordinary number."""
    from decimal import Decimal

    from tunesift.io.files import exact_number
    from tunesift.rowfields import category

    assert type(exact_number("0.10000000000000001")) is float and exact_number("1.5") == 1.5
    assert isinstance(exact_number("3.14159265358979323846"), Decimal)
    assert isinstance(exact_number("1e400"), Decimal) and isinstance(exact_number("1e-400"), Decimal)
    assert exact_number("0.0") == 0.0 and exact_number("-0.0e5") == 0.0
    assert category(Decimal("3.14159265358979323846")) == "3.14159265358979323846"  # a number, not quoted


def test_decimals_beside_integers_or_inside_lists_write_to_parquet(tmp_path):
    import pyarrow.parquet as pq

    from tunesift.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b", "x": 1, "y": [1.5, 3.14159265358979323846]}\n'
                    '{"instruction": "c", "output": "d", "x": 1e400, "y": []}\n')
    assert main(["select", str(data), "--method", "random", "--budget", "1.0", "--out", str(tmp_path / "o"),
                 "--out-format", "parquet", "-q"]) == 0
    t = pq.read_table(tmp_path / "o" / "selected.parquet")
    assert sorted(t.column("x").to_pylist()) == [1.0, float("inf")]
    assert [1.5, 3.141592653589793] in t.column("y").to_pylist()


def test_the_report_reads_the_input_with_the_selections_field_map(tmp_path, capsys):
    """The report read the input again with the default map: with --id-field none and repeated
    ids that read failed, and the dropped records lost their text."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": "a", "prompt": f"question {i}", "response": f"answer {i}"}) + "\n"
                            for i in range(4)))
    out = tmp_path / "o"
    assert main(["select", str(data), "--method", "random", "--budget", "2", "--id-field", "none", "--out", str(out),
                 "--report", "-q"]) == 0
    page = (out / "report.html").read_text()
    assert json.loads((out / "manifest.json").read_text())["fields"] == {"id": "none"}
    assert "cannot read the input" not in page and sum(f"question {i}" in page for i in range(4)) == 4
