"""Any row's values as strict JSON holds them: the JSON Lines form of tunesift's outputs.

Values JSON has no form for are written in a documented, loss-free tagged form
(docs/input-formats.md): ``{"$bytes": base64}``, ``{"$float": "NaN" | "Infinity" | "-Infinity"}``,
``{"$datetime": ISO 8601}``, ``{"$date": ...}``, ``{"$time": ...}``, ``{"$duration": ISO 8601
seconds}``; decimals are JSON numbers with their exact digits. A line never holds U+2028, U+2029
or U+0085 unescaped: readers that split text on every line boundary (``str.splitlines``) would
cut the record there.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import re
import secrets

from ..errors import TunesiftError

__all__ = ["json_line", "json_value", "utf8_text"]


def json_value(v):
    """A value as strict JSON can hold it (see the module docstring for the tagged forms)."""
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        return {"$float": "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")}
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, dict):
        return {str(k) if not isinstance(k, str) else k: json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_value(x) for x in v]
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(v)).decode("ascii")}
    if type(v).__name__ in ("NaTType", "NAType"):  # pandas' missing time / value: null, as from_pandas reads it
        return None
    if isinstance(v, decimal.Decimal):
        if v.is_finite():
            return _decimal_marker(v)
        return {"$decimal": str(v)}
    if type(v).__name__ == "Timestamp" and hasattr(v, "isoformat"):  # pandas, nanoseconds kept
        return {"$datetime": v.isoformat()}
    if isinstance(v, dt.datetime):
        return {"$datetime": v.isoformat()}
    if isinstance(v, dt.date):
        return {"$date": v.isoformat()}
    if isinstance(v, dt.time):
        return {"$time": v.isoformat()}
    if isinstance(v, dt.timedelta):
        ns = v.value if type(v).__name__ == "Timedelta" else (v // dt.timedelta(microseconds=1)) * 1000
        return _duration(ns)
    kind = getattr(getattr(v, "dtype", None), "kind", None)
    if kind in ("M", "m"):  # numpy datetime64 / timedelta64, scalar or array: .item() may give bare ns
        return _numpy_time(v)
    if getattr(v, "ndim", 0) and hasattr(v, "tolist"):  # a numpy array (it has .item too): a list
        return json_value(v.tolist())
    if hasattr(v, "item") and callable(v.item):  # numpy scalar (a 0-d array too)
        return json_value(v.item())
    if isinstance(v, (set, frozenset)):
        return [json_value(x) for x in sorted(v, key=repr)]
    raise TunesiftError(f"cannot write a value of type {type(v).__name__} to JSON Lines; use --out-format parquet")


def _duration(ns: int) -> dict:
    """``{"$duration": "PT<seconds>S"}`` from integer nanoseconds, in plain digits (ISO 8601 has no
    exponents; a float would write 1 microsecond as 1e-06)."""
    secs = decimal.Decimal(int(ns)).scaleb(-9)
    return {"$duration": f"PT{format(secs.normalize(), 'f')}S"}


def _numpy_time(v):
    """numpy datetime64 / timedelta64 values (an array: a list of them) in the tagged forms; NaT: null."""
    import numpy as np

    if getattr(v, "ndim", 0):
        return [_numpy_time(x) for x in v]
    if np.isnat(v):
        return None
    if v.dtype.kind == "m":
        return _duration(int(v.astype("timedelta64[ns]").astype(np.int64)))
    text = str(np.datetime_as_string(v, unit="auto"))
    return {"$date": text} if v.dtype == np.dtype("datetime64[D]") else {"$datetime": text}


# Marks a Decimal's digits until the JSON text is made. The per-process nonce keeps a user's string
# that happens to spell the marker from being written as a number.
_NONCE = secrets.token_hex(8)
_DEC = f"\x00tunesift-decimal-{_NONCE}:"
_DEC_RE = re.compile(rf'"\\u0000tunesift-decimal-{_NONCE}:([-+0-9.eE]+)"')


_LINE_BREAKS = {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"}


def utf8_text(text: str) -> str:
    """``text`` as UTF-8 can hold it: a lone surrogate (which Python strings hold and UTF-8, Arrow
    and Parquet do not) as its ``\\uXXXX`` escape, anything else unchanged. What scores.parquet
    writes for an id, and so what two ids are compared as."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _decimal_marker(d: decimal.Decimal) -> str:
    return _DEC + (format(d, "f") if abs(d.adjusted()) < 30 else str(d).replace("E", "e"))


def json_line(row, *, sort_keys: bool = False) -> str:
    """One strict-JSON line for ``row`` (any value; a dict for a record): UTF-8 text, with a lone
    surrogate kept as its escape; ``sort_keys``: one text for equal mappings."""
    value = json_value(row)
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, sort_keys=sort_keys)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True, allow_nan=False, sort_keys=sort_keys)
    text = _DEC_RE.sub(r"\1", text) if _NONCE in text else text
    # only inside strings: escaped, the text reads back the same and splits into lines only at \n
    return text.translate(_LINE_BREAKS)
