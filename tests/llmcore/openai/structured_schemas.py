"""The JSON Schema corpus of the structured-output tests: 40 schemas of increasing
difficulty, each with the request it goes with.

Every string has a `maxLength` and every array a `maxItems`, and every number is
bounded, with a `multipleOf` (an exact binary fraction, which `jsonschema` checks
without rounding) where it is not an integer, so that a 135M-parameter model
sampling at temperature 1 still finishes well within `max_tokens`.
Data only: the tests decide how to send them.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def _s(max_length: int = 16, **extra: Any) -> Schema:
    return {"type": "string", "maxLength": max_length, **extra}


def _int(lo: int = 0, hi: int = 100) -> Schema:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _obj(required: list[str] | None = None, **properties: Schema) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


_ADDRESS = _obj(street=_s(24), city=_s(16), zip=_s(5, pattern="^[0-9]{5}$"))

# (name, what to ask for, schema), easiest first.
SCHEMAS: list[tuple[str, str, Schema]] = [
    ("boolean", "Is the sky blue? Answer in JSON.", {"type": "boolean"}),
    ("bounded_integer", "Pick a number from 1 to 10.", _int(1, 10)),
    ("bounded_string", "Name a fruit.", _s(12)),
    ("enum_string", "Pick a colour.", {"enum": ["red", "green", "blue"]}),
    ("const", "Say the version.", {"const": "v1"}),
    ("one_property", "Give a city as JSON.", _obj(city=_s(16))),
    ("person", "Describe a person as JSON.", _obj(name=_s(20), age=_int(0, 120))),
    (
        "bounded_number",
        "Give a temperature in Celsius as JSON.",
        _obj(celsius={"type": "number", "minimum": -50, "maximum": 50, "multipleOf": 0.5}),
    ),
    (
        "exclusive_bounds",
        "Give a probability as JSON.",
        _obj(
            p={"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "multipleOf": 0.125}
        ),
    ),
    (
        "integer_vs_number",
        "Give a count and a ratio as JSON.",
        _obj(
            count=_int(0, 1000),
            ratio={"type": "number", "minimum": 0, "maximum": 10, "multipleOf": 0.25},
        ),
    ),
    ("optional_property", "Describe a pet as JSON.", _obj(["name"], name=_s(12), age=_int(0, 30))),
    (
        "enum_property",
        "Describe a traffic light as JSON.",
        _obj(state={"enum": ["red", "amber", "green"]}, seconds=_int(1, 120)),
    ),
    (
        "mixed_enum",
        "Pick a value as JSON.",
        _obj(value={"enum": ["low", 1, 2.5, True, None]}),
    ),
    (
        "nullable",
        "Describe a user as JSON.",
        _obj(nickname={"type": ["string", "null"], "maxLength": 12}),
    ),
    (
        "string_array",
        "List some fruits as JSON.",
        _obj(fruits={"type": "array", "items": _s(12), "maxItems": 4}),
    ),
    (
        "array_bounds",
        "List two or three numbers as JSON.",
        _obj(numbers={"type": "array", "items": _int(0, 99), "minItems": 2, "maxItems": 3}),
    ),
    (
        "top_level_array",
        "List some colours as a JSON array.",
        {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
    ),
    (
        "nested_object",
        "Describe a person and their address as JSON.",
        _obj(name=_s(20), address=_ADDRESS),
    ),
    ("pattern", "Give a product code as JSON.", _obj(code=_s(8, pattern="^[A-Z]{3}-[0-9]{3}$"))),
    (
        "date_format",
        "Give a birthday as JSON.",
        _obj(birthday={"type": "string", "format": "date"}),
    ),
    (
        "email_format",
        "Give a contact as JSON.",
        _obj(email={"type": "string", "format": "email", "maxLength": 40}),
    ),
    ("uuid_format", "Give an identifier as JSON.", _obj(id={"type": "string", "format": "uuid"})),
    (
        "ipv4_and_date",
        "Give a server address and a date as JSON.",
        _obj(ip={"type": "string", "format": "ipv4"}, at={"type": "string", "format": "date"}),
    ),
    (
        "any_of",
        "Give an identifier that is a number or a name, as JSON.",
        _obj(id={"anyOf": [_int(0, 9999), _s(10)]}),
    ),
    (
        "one_of_objects",
        "Describe a shape as JSON.",
        _obj(
            shape={
                "oneOf": [
                    _obj(kind={"const": "circle"}, radius=_int(1, 50)),
                    _obj(kind={"const": "square"}, side=_int(1, 50)),
                ]
            }
        ),
    ),
    (
        "refs",
        "Describe a shipment as JSON.",
        {
            "$defs": {"address": _ADDRESS},
            **_obj(**{"from": {"$ref": "#/$defs/address"}, "to": {"$ref": "#/$defs/address"}}),
        },
    ),
    (
        "array_of_objects",
        "List some books as JSON.",
        _obj(
            books={
                "type": "array",
                "maxItems": 3,
                "items": _obj(title=_s(24), year=_int(1800, 2025)),
            }
        ),
    ),
    (
        "all_of",
        "Describe an employee as JSON.",
        {"allOf": [_obj(["name"], name=_s(16), team=_s(12)), {"required": ["team"]}]},
    ),
    (
        "nested_arrays",
        "Give a small matrix as JSON.",
        _obj(
            rows={
                "type": "array",
                "maxItems": 3,
                "minItems": 1,
                "items": {"type": "array", "items": _int(0, 9), "minItems": 1, "maxItems": 3},
            }
        ),
    ),
    (
        "unique_enum_tags",
        "Tag an article as JSON.",
        _obj(
            title=_s(30),
            tags={
                "type": "array",
                "maxItems": 3,
                "items": {"enum": ["news", "sport", "tech", "art"]},
            },
        ),
    ),
    (
        "defaults_and_descriptions",
        "Describe a setting as JSON.",
        _obj(
            key={**_s(16), "description": "the setting's name"},
            enabled={"type": "boolean", "default": False, "title": "On?"},
        ),
    ),
    (
        "additional_properties_schema",
        "Give word counts as JSON.",
        {"type": "object", "additionalProperties": _int(0, 99), "maxProperties": 3},
    ),
    (
        "pattern_properties_free",
        "Describe an event as JSON.",
        _obj(
            name=_s(20),
            day={"enum": ["mon", "tue", "wed", "thu", "fri"]},
            hour=_int(0, 23),
            minute=_int(0, 59),
        ),
    ),
    (
        "chained_refs",
        "Describe a small tree, three levels deep at most, as JSON.",
        {
            "$defs": {
                "leaf": _obj(label=_s(8)),
                "branch": _obj(
                    ["label"],
                    label=_s(8),
                    children={"type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/leaf"}},
                ),
            },
            **_obj(
                label=_s(8),
                children={"type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/branch"}},
            ),
        },
    ),
    (
        "order",
        "Describe an order as JSON.",
        _obj(
            id=_s(12, pattern="^ORD[0-9]{1,6}$"),
            status={"enum": ["new", "paid", "sent"]},
            total={"type": "number", "minimum": 0, "maximum": 1000, "multipleOf": 0.25},
            items={
                "type": "array",
                "minItems": 1,
                "maxItems": 3,
                "items": _obj(sku=_s(10), qty=_int(1, 9)),
            },
        ),
    ),
    (
        "nullable_nested",
        "Describe a customer as JSON.",
        _obj(
            ["name", "address"],
            name=_s(20),
            address={"anyOf": [_ADDRESS, {"type": "null"}]},
            vip={"type": "boolean"},
        ),
    ),
    (
        "event_log",
        "Write a short event log as JSON.",
        _obj(
            events={
                "type": "array",
                "maxItems": 3,
                "items": _obj(
                    ["level", "message"],
                    level={"enum": ["info", "warn", "error"]},
                    message=_s(30),
                    code={"type": ["integer", "null"], "minimum": 0, "maximum": 999},
                ),
            }
        ),
    ),
    (
        "discriminated_union",
        "Describe a payment as JSON.",
        _obj(
            payment={
                "anyOf": [
                    _obj(method={"const": "card"}, last4=_s(4, pattern="^[0-9]{4}$")),
                    _obj(
                        method={"const": "bank"},
                        iban=_s(22, pattern="^[A-Z]{2}[0-9]{2}[A-Z0-9]{4,18}$"),
                    ),
                    _obj(method={"const": "cash"}),
                ]
            }
        ),
    ),
    (
        "invoice",
        "Write an invoice as JSON.",
        {
            "$defs": {
                "party": _obj(
                    name=_s(20), email={"type": "string", "format": "email", "maxLength": 32}
                )
            },
            **_obj(
                ["number", "date", "seller", "buyer", "lines"],
                number=_s(10, pattern="^INV-[0-9]{1,5}$"),
                date={"type": "string", "format": "date"},
                seller={"$ref": "#/$defs/party"},
                buyer={"$ref": "#/$defs/party"},
                lines={
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 2,
                    "items": _obj(
                        text=_s(20),
                        amount={
                            "type": "number",
                            "minimum": 0,
                            "exclusiveMaximum": 10000,
                            "multipleOf": 0.25,
                        },
                    ),
                },
                note={"type": ["string", "null"], "maxLength": 20},
            ),
        },
    ),
    (
        "config_document",
        "Write a service configuration as JSON.",
        _obj(
            ["name", "version", "server", "features"],
            name=_s(16),
            version=_s(8, pattern="^[0-9]+\\.[0-9]+\\.[0-9]+$"),
            server=_obj(
                host={"anyOf": [{"type": "string", "format": "ipv4"}, {"const": "localhost"}]},
                port=_int(1, 65535),
                tls={"type": "boolean"},
            ),
            features={
                "type": "array",
                "maxItems": 3,
                "items": _obj(
                    ["flag"],
                    flag=_s(12),
                    rollout={"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.125},
                ),
            },
            owner={"anyOf": [_obj(id={"type": "string", "format": "uuid"}), {"type": "null"}]},
        ),
    ),
]

assert len(SCHEMAS) == 40, len(SCHEMAS)
assert len({name for name, _, _ in SCHEMAS}) == len(SCHEMAS)
