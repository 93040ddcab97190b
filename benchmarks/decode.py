"""Decoding stored instance records, at the limit: dyndisc's decoder beside the alternatives issue 25 named.

    python -m benchmarks.decode [--records 100000] [--runs 5]

``--records`` records of one endpoint, as a registered worker writes them (a ``tcp`` transport in the
reference's shape, two metadata fields, ``registered_at``), are decoded one at a time, as a layout reads a
snapshot, by each of the variants below, in three ways: each record dropped as it is made ("decoded"), all
kept in a list ("kept": the collector's passes over them count too), and kept with the collector paused
("kept, gc paused": how dyndisc decodes a snapshot, in ``_concurrency.gc_paused``).

- ``json.loads`` (and ``orjson.loads`` if it is installed): dicts, nothing checked: the raw limit;
- dyndisc's decoder (:func:`dyndisc._models.record_decoder`): pydantic-core into ``Instance`` objects, with
  no Python code per record;
- the same with a Python validator function per record for the transport and the metadata (the decoder
  before issue 25);
- pydantic-core with no Python per record and the transport and metadata left as dicts: what pydantic-core
  costs on its own, not a decoder (the metadata is not frozen, the transport not a ``Transport``);
- msgspec (if installed) into a frozen ``Struct`` with ``gc=False`` holding the same checks: not a decoder
  either (not an ``Instance``), and then an ``Instance`` made from each ``Struct`` in Python, which is.

Every run times every variant once, in an order that rotates from run to run; the figures are medians of
the runs, and each ratio is the median of the ratios to ``json.loads`` measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import statistics
import time
from collections.abc import Callable
from typing import Annotated, Any

from pydantic_core import core_schema

from dyndisc import Instance, Readiness, Transport
from dyndisc._concurrency import gc_paused
from dyndisc._metadata import EMPTY, freeze_wire
from dyndisc._models import _decoder, record_decoder
from dyndisc._names import NAME_PATTERN
from dyndisc._transport import _transport_from_wire

Decode = Callable[[bytes], Any]


def records(count: int) -> list[bytes]:
    """``count`` records of one endpoint, as a worker registered with a TCP request plane writes them."""
    first = 0x694D98147D540000
    return [
        Instance(
            "dynamo",
            "backend",
            "generate",
            first + n,
            f"tcp://10.0.{n >> 8 & 255}.{n & 255}:41555/{first + n:x}/dynamo/backend/generate",
            metadata={"model": "llama-3-8b-instruct", "gpu": n % 8},
            registered_at=1.7e9 + n / 1000,
        ).to_json()
        for n in range(count)
    ]


def _with_functions() -> Decode:
    """The decoder before issue 25: a Python validator function per record for transport and metadata."""
    wire = core_schema.dict_schema(
        core_schema.str_schema(min_length=1), core_schema.str_schema(), min_length=1, max_length=1
    )
    metadata = core_schema.dict_schema(core_schema.str_schema(), core_schema.any_schema())
    return _decoder(
        core_schema.nullable_schema(core_schema.no_info_after_validator_function(_transport_from_wire, wire)),
        core_schema.no_info_after_validator_function(freeze_wire, metadata),
    ).validate_json


def _dicts_left() -> Decode:
    wire = core_schema.dict_schema(
        core_schema.str_schema(min_length=1), core_schema.str_schema(), min_length=1, max_length=1
    )
    metadata = core_schema.dict_schema(core_schema.str_schema(), core_schema.any_schema())
    return _decoder(core_schema.nullable_schema(wire), metadata).validate_json


def _msgspec() -> tuple[Decode, Decode] | None:
    """msgspec's decoder of the record into a frozen Struct, and the same followed by an ``Instance``."""
    if importlib.util.find_spec("msgspec") is None:
        return None
    import msgspec

    name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
    text = Annotated[str, msgspec.Meta(min_length=1)]
    wire = Annotated[dict[text, str], msgspec.Meta(min_length=1, max_length=1)]

    # msgspec refuses bounds past int64 (``le=2**64 - 1``): the upper bound of an id is left unchecked here.
    record = msgspec.defstruct(
        "Record",
        [
            ("namespace", name),
            ("component", name),
            ("endpoint", name),
            ("instance_id", Annotated[int, msgspec.Meta(ge=0)]),
            ("transport", wire | None, None),
            ("metadata", dict[str, Any], {}),
            ("readiness", Readiness, Readiness.READY),
            ("device_type", text | None, None),
            ("request_plane_codec", text | None, None),
            ("registered_at", Annotated[float, msgspec.Meta(ge=0, lt=1e11)] | None, None),
        ],
        frozen=True,
        gc=False,
    )
    decode = msgspec.json.Decoder(record).decode
    new, put = object.__new__, object.__setattr__

    def to_instance(data: bytes) -> Instance:
        # Field by field, unrolled: the least Python that makes an Instance without its __init__.
        record: Any = decode(data)
        found: Instance = new(Instance)
        put(found, "namespace", record.namespace)
        put(found, "component", record.component)
        put(found, "endpoint", record.endpoint)
        put(found, "instance_id", record.instance_id)
        put(found, "transport", None if record.transport is None else _transport_from_wire(record.transport))
        put(found, "metadata", freeze_wire(record.metadata) if record.metadata else EMPTY)
        put(found, "readiness", record.readiness)
        put(found, "device_type", record.device_type)
        put(found, "request_plane_codec", record.request_plane_codec)
        put(found, "registered_at", record.registered_at)
        return found

    return decode, to_instance


def variants() -> dict[str, Decode]:
    found: dict[str, Decode] = {"json.loads (dicts)": json.loads}
    if importlib.util.find_spec("orjson") is not None:
        import orjson

        found["orjson.loads (dicts)"] = orjson.loads
    found["dyndisc: pydantic-core, no Python per record"] = record_decoder()
    found["pydantic-core + validator functions (before)"] = _with_functions()
    found["pydantic-core, transport/metadata as dicts*"] = _dicts_left()
    if (pair := _msgspec()) is not None:
        found["msgspec Struct (frozen, gc=False)*"] = pair[0]
        found["msgspec Struct, then Instance in Python"] = pair[1]
    return found


#: How the decoded records are treated: dropped at once; kept in a list (the collector's passes over what is
#: kept count too); kept with the collector paused, as a snapshot's records are (``gc_paused``).
MODES = ("decoded", "kept", "kept, gc paused")


def _time(decode: Decode, data: list[bytes], mode: str) -> float:
    gc.collect()
    started = time.perf_counter()
    if mode == "decoded":
        for value in data:
            decode(value)
        return time.perf_counter() - started
    with gc_paused() if mode == "kept, gc paused" else contextlib.nullcontext():
        kept = [decode(value) for value in data]
    elapsed = time.perf_counter() - started
    del kept
    return elapsed


def measure(count: int, runs: int) -> list[dict[str, Any]]:
    data = records(count)
    found = variants()
    expected = Instance.from_json(data[-1])
    for label, decode in found.items():
        if "Instance" in label or "dyndisc" in label or "before" in label:
            assert decode(data[-1]) == expected, label
            assert type(decode(data[-1]).transport) is Transport, label
    labels = list(found)
    seconds: dict[tuple[str, str], list[float]] = {(label, m): [] for label in labels for m in MODES}
    ratios: dict[tuple[str, str], list[float]] = {(label, m): [] for label in labels for m in MODES}
    for run in range(runs):
        order = labels[run % len(labels) :] + labels[: run % len(labels)]
        for mode in MODES:
            this = {label: _time(found[label], data, mode) for label in order}
            for label, elapsed in this.items():
                seconds[label, mode].append(elapsed)
                ratios[label, mode].append(elapsed / this[labels[0]])
    rows = []
    for label in labels:
        row: dict[str, Any] = {"variant": label, "runs": runs}
        for mode in MODES:
            row[f"{mode}: us_per_record"] = round(statistics.median(seconds[label, mode]) / count * 1e6, 3)
            row[f"{mode}: ratio_to_json_loads"] = round(statistics.median(ratios[label, mode]), 2)
        rows.append(row)
    return rows


#: Bad records, and the message each decoder that makes an ``Instance`` gives for them.
BAD = {
    "id negative": b'{"namespace":"n","component":"c","endpoint":"e","instance_id":-1}',
    "id a string": b'{"namespace":"n","component":"c","endpoint":"e","instance_id":"1"}',
    "name with /": b'{"namespace":"a/b","component":"c","endpoint":"e","instance_id":1}',
    "transport": b'{"namespace":"n","component":"c","endpoint":"e","instance_id":1,"transport":{"tcp":1}}',
    "readiness": b'{"namespace":"n","component":"c","endpoint":"e","instance_id":1,"readiness":"x"}',
}


def errors() -> list[dict[str, str]]:
    rows = []
    found = variants()
    msgspec_decode = found.get("msgspec Struct, then Instance in Python")
    for case, value in BAD.items():
        row = {"record": case}
        try:
            Instance.from_json(value)
        except ValueError as exc:
            row["dyndisc"] = str(exc)
        if msgspec_decode is not None:
            try:
                msgspec_decode(value)
            except Exception as exc:
                row["msgspec"] = str(exc)
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len(row["variant"]) for row in rows)
    heads = " | ".join(f"{mode}: µs/record | ratio" for mode in MODES)
    print(f"| {'variant':{width}s} | {heads} |")
    print(f"|{'-' * (width + 2)}|" + "---:|---:|" * len(MODES))
    for row in rows:
        figures = " | ".join(
            f"{row[f'{mode}: us_per_record']:.3f} | {row[f'{mode}: ratio_to_json_loads']:.2f}"
            for mode in MODES
        )
        print(f"| {row['variant']:{width}s} | {figures} |")
    print(f"(* not a decoder: no Instance, or its metadata not frozen; medians of {rows[0]['runs']} runs;")
    print(" ratio: to json.loads in the same run)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    rows = measure(args.records, args.runs)
    print_table(rows)
    for row in errors():
        print(json.dumps(row, ensure_ascii=False))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)


if __name__ == "__main__":
    main()
