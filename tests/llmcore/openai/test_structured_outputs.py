"""Structured outputs end to end: a real `python -m llmcore.http` serving the embedded
SmolLM2-135M-Instruct, driven by the official `openai` client.

The 40 JSON Schemas of `structured_schemas` (greedy, then sampled with n=3 seeds
each), regex / choice / Lark / GBNF on chat and completions, streamed and not, in
every spelling (`response_format`, `structured_outputs`, `guided_*`), the client's
Pydantic `parse`, vLLM's documented `guided_choice` example, unconstrained requests
that do not change when batched beside constrained ones, a table of bad constraints
that are each a 400 naming the field, and `max_tokens` / `stop` under a constraint.
Requests are sent concurrently so that the engine batches them (the file's time is
mostly a few batched generations)."""

from __future__ import annotations

import ast
import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest

from tests.llmcore.openai.structured_schemas import SCHEMAS
from tests.server_process import run_openai, smollm2_server

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pydantic = pytest.importorskip("pydantic")

pytestmark = pytest.mark.slow  # a server subprocess on SmolLM2

MODEL = "SmolLM2-135M-Instruct"
MAX_TOKENS = 400
T = TypeVar("T")


@pytest.fixture(scope="module")
def server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's /v1 URL (only the chat model: no embeddings model is loaded)."""
    with smollm2_server(smollm2_path, tmp_path_factory.mktemp("structured")) as srv:
        yield srv.url + "/v1"


def run(server: str, work: Callable[[Any], Awaitable[T]]) -> T:
    return run_openai(server, work)


def chat(client: Any, prompt: str, **kw: Any) -> Awaitable[Any]:
    kw.setdefault("max_tokens", MAX_TOKENS)
    messages = [{"role": "user", "content": prompt}]
    return client.chat.completions.create(model=MODEL, messages=messages, **kw)  # type: ignore[no-any-return]


def json_schema_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


# RFC 3339's full-date, which is what llguidance's "date" format means: the year 0000
# is valid there (jsonschema's own checker asks Python's `date`, which refuses it).
FORMATS = jsonschema.FormatChecker()
FORMATS.checks("date")(
    lambda v: re.fullmatch(r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])", v) is not None
)


def check_json(name: str, schema: dict[str, Any], choice: Any) -> None:
    text = choice.message.content
    assert choice.finish_reason == "stop", (name, text)
    jsonschema.Draft202012Validator(schema, format_checker=FORMATS).validate(json.loads(text))


# ---- the JSON Schema corpus ------------------------------------------------------------------


def test_json_schemas_greedy(server: str) -> None:
    async def work(client: Any) -> list[Any]:
        return await asyncio.gather(*(
            chat(client, prompt, temperature=0, response_format=json_schema_format(name, schema))
            for name, prompt, schema in SCHEMAS
        ))  # fmt: skip

    for (name, _, schema), reply in zip(SCHEMAS, run(server, work), strict=True):
        (choice,) = reply.choices
        check_json(name, schema, choice)


# Half the sampled requests use the default whitespace (one space, or a newline and
# some indentation, between two JSON tokens), half vLLM's compact option.
BOUNDED_WHITESPACE: tuple[dict[str, Any], ...] = ({}, {"disable_any_whitespace": True})


def test_json_schemas_sampled_with_n(server: str) -> None:
    """Temperature 1, n=3 (three seeds per schema: the request's seed plus the choice
    index), the schema given through vLLM's `structured_outputs.json`."""

    async def work(client: Any) -> list[Any]:
        return await asyncio.gather(*(
            chat(client, prompt, temperature=1, n=3, seed=1000 + i,
                 extra_body={"structured_outputs": {"json": schema, **BOUNDED_WHITESPACE[i % 2]}})
            for i, (_, prompt, schema) in enumerate(SCHEMAS)
        ))  # fmt: skip

    for (name, _, schema), reply in zip(SCHEMAS, run(server, work), strict=True):
        assert [c.index for c in reply.choices] == [0, 1, 2]
        for choice in reply.choices:
            check_json(name, schema, choice)


ASK_FOR_AN_OBJECT = 'What is 2+2? Answer as a JSON object with the key "result".'


def test_json_object_and_guided_json(server: str) -> None:
    person = SCHEMAS[6][2]
    as_completion = {"response_format": json_schema_format("p", person)}

    async def work(client: Any) -> list[Any]:
        return await asyncio.gather(
            chat(client, ASK_FOR_AN_OBJECT, temperature=0, response_format={"type": "json_object"}),
            chat(client, "Describe a person as JSON.", temperature=0,
                 extra_body={"guided_json": person}),
            client.completions.create(model=MODEL, prompt="A person as JSON:", temperature=0,
                                      max_tokens=MAX_TOKENS, extra_body=as_completion),
        )  # fmt: skip

    any_object, guided, completion = run(server, work)
    assert any_object.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(any_object.choices[0].message.content), dict)
    check_json("guided_json", person, guided.choices[0])
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].text), person)


# ---- regex, choice, grammars ---------------------------------------------------------------

DATE_REGEX = r"(January|March|May|July) [1-9], (19|20)[0-9]{2}"
CHOICES = ["yes", "no", "maybe"]
ARITHMETIC_LARK = r"""
start: expr
expr: term | term OP term | term OP term OP term
term: NUMBER | "(" NUMBER OP NUMBER ")"
OP: "+" | "-" | "*" | "/"
NUMBER: /[0-9]{1,3}/
"""
LIST_GBNF = r"""
root ::= "[" item ("," item)? ("," item)? "]"
item ::= "\"" [a-z] [a-z]? [a-z]? [a-z]? [a-z]? [a-z]? "\""
"""


def _is_arithmetic(text: str) -> bool:
    """An expression of integers and + - * / (no spaces), as Python parses it."""
    allowed = (ast.Expression, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    nodes = list(ast.walk(tree))
    numbers = all(isinstance(n.value, int) for n in nodes if isinstance(n, ast.Constant))
    return " " not in text and numbers and all(isinstance(n, (*allowed, ast.Constant))
                                                for n in nodes)  # fmt: skip


def _is_word_list(text: str) -> bool:
    words = json.loads(text)
    return 1 <= len(words) <= 3 and all(re.fullmatch("[a-z]{1,6}", w) for w in words)


# name -> (prompt, the constraint in several spellings, the checker)
CONSTRAINTS: dict[str, tuple[str, list[dict[str, Any]], Callable[[str], bool]]] = {
    "regex": (
        "When was the treaty signed?",
        [{"guided_regex": DATE_REGEX}, {"structured_outputs": {"regex": DATE_REGEX}}],
        lambda text: re.fullmatch(DATE_REGEX, text) is not None,
    ),
    "choice": (
        "Will it rain tomorrow?",
        [{"guided_choice": CHOICES}, {"structured_outputs": {"choice": CHOICES}}],
        lambda text: text in CHOICES,
    ),
    "lark": (
        "Write an arithmetic expression.",
        [{"guided_grammar": ARITHMETIC_LARK}, {"structured_outputs": {"grammar": ARITHMETIC_LARK}}],
        _is_arithmetic,
    ),
    "gbnf": (
        "List a few short words as a JSON array.",
        [{"structured_outputs": {"grammar": LIST_GBNF}}, {"guided_grammar": LIST_GBNF}],
        _is_word_list,
    ),
}


async def _text(client: Any, api: str, prompt: str, stream: bool, **kw: Any) -> tuple[str, str]:
    """(text, finish_reason) of one request, streamed or not."""
    if api == "chat":
        reply = await chat(client, prompt, stream=stream, **kw)
    else:
        kw.setdefault("max_tokens", MAX_TOKENS)
        reply = await client.completions.create(model=MODEL, prompt=prompt + "\n", stream=stream,
                                                **kw)  # fmt: skip
    if not stream:
        choice = reply.choices[0]
        return (choice.message.content if api == "chat" else choice.text), choice.finish_reason
    parts, finish = [], ""
    async for chunk in reply:
        for choice in chunk.choices:
            piece = choice.delta.content if api == "chat" else choice.text
            parts.append(piece or "")
            finish = choice.finish_reason or finish
    return "".join(parts), finish


@pytest.mark.parametrize("kind", list(CONSTRAINTS))
def test_constraints_on_chat_and_completions_streamed_and_not(server: str, kind: str) -> None:
    prompt, spellings, matches = CONSTRAINTS[kind]
    cases = [(api, stream, temperature, body)
             for api in ("chat", "completions") for stream in (False, True)
             for temperature in (0, 1) for body in spellings]  # fmt: skip

    async def work(client: Any) -> list[tuple[str, str]]:
        return await asyncio.gather(*(
            _text(client, api, prompt, stream, temperature=temperature, seed=i, extra_body=body)
            for i, (api, stream, temperature, body) in enumerate(cases)
        ))  # fmt: skip

    for case, (text, finish) in zip(cases, run(server, work), strict=True):
        assert finish == "stop", (case, text)
        assert matches(text), (case, text)


def test_choice_streamed_with_n(server: str) -> None:
    async def work(client: Any) -> dict[int, str]:
        texts: dict[int, str] = {}
        stream = await chat(client, "Will it rain?", stream=True, n=4, temperature=1, seed=7,
                            extra_body={"guided_choice": CHOICES})  # fmt: skip
        async for chunk in stream:
            for c in chunk.choices:
                texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
        return texts

    texts = run(server, work)
    assert sorted(texts) == [0, 1, 2, 3] and all(t in CHOICES for t in texts.values()), texts


# ---- the clients' own spellings ------------------------------------------------------------


class City(pydantic.BaseModel):  # type: ignore[misc,name-defined]
    name: str = pydantic.Field(max_length=20)
    country: str = pydantic.Field(max_length=20)
    population: int = pydantic.Field(ge=0, le=50_000_000)
    size: Literal["village", "town", "city"]


def test_pydantic_parse(server: str) -> None:
    """`beta.chat.completions.parse` sends the model's strict JSON Schema and parses
    the answer back into the model."""

    async def work(client: Any) -> Any:
        return await client.beta.chat.completions.parse(
            model=MODEL, messages=[{"role": "user", "content": "Describe Paris."}],
            response_format=City, temperature=0, max_tokens=MAX_TOKENS,
        )  # fmt: skip

    reply = run(server, work)
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, City) and parsed.name, reply
    assert reply.choices[0].finish_reason == "stop"


def test_vllm_docs_guided_choice_example(server: str) -> None:
    async def work(client: Any) -> Any:
        return await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Classify this sentiment: vLLM is wonderful!"}],
            extra_body={"guided_choice": ["positive", "negative"]},
        )

    reply = run(server, work)
    assert reply.choices[0].message.content in ("positive", "negative")
    assert reply.choices[0].finish_reason == "stop"


# ---- batching ------------------------------------------------------------------------------


def test_unconstrained_outputs_do_not_change_beside_constrained_ones(server: str) -> None:
    """A greedy batch of 32, 20 of them constrained: each of the 12 unconstrained
    answers is the one the same request gets alone."""
    free = [f"Tell me one fact about the number {i}." for i in range(12)]
    constrained = SCHEMAS[:20]

    async def batch(client: Any) -> list[Any]:
        return await asyncio.gather(
            *(chat(client, p, temperature=0, max_tokens=16) for p in free),
            *(chat(client, prompt, temperature=0, response_format=json_schema_format(n, s))
              for n, prompt, s in constrained),
        )  # fmt: skip

    async def alone(client: Any) -> list[Any]:
        return [await chat(client, p, temperature=0, max_tokens=16) for p in free]

    together = run(server, batch)
    for (name, _, schema), reply in zip(constrained, together[12:], strict=True):
        check_json(name, schema, reply.choices[0])
    by_themselves = run(server, alone)
    assert [r.choices[0].message.content for r in together[:12]] == [
        r.choices[0].message.content for r in by_themselves
    ]


# ---- limits ---------------------------------------------------------------------------------


def test_max_tokens_too_small_ends_with_length(server: str) -> None:
    invoice = SCHEMAS[-2][2]

    async def work(client: Any) -> list[tuple[str, str]]:
        fmt = {"response_format": json_schema_format("invoice", invoice)}
        return await asyncio.gather(
            _text(client, "chat", "Write an invoice as JSON.", False, max_tokens=6, **fmt),
            _text(client, "chat", "Write an invoice as JSON.", True, max_tokens=6, **fmt),
            _text(client, "completions", "Count:", False, max_tokens=3,
                  extra_body={"guided_regex": "[0-9]{20}"}),
        )  # fmt: skip

    for text, finish in run(server, work):
        assert finish == "length" and text, text


def test_stop_strings_with_a_constraint(server: str) -> None:
    async def work(client: Any) -> list[tuple[str, str]]:
        body = {"guided_regex": "alpha beta, gamma delta"}
        return await asyncio.gather(
            _text(client, "chat", "Say it.", False, stop=[","], extra_body=body),
            _text(client, "completions", "Say it.", True, stop=[" gamma"], extra_body=body),
        )

    assert run(server, work) == [("alpha beta", "stop"), ("alpha beta,", "stop")]


# ---- refusals -------------------------------------------------------------------------------

_JS = "response_format"
# (what is wrong, the request's extra fields, the field named, a word of the reason)
BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown type", {"guided_json": {"type": "frobnicate"}}, "guided_json", "frobnicate"),
    ("if/then", {"guided_json": {"if": {"required": ["a"]}, "then": {"required": ["b"]}}},
     "guided_json", "if"),
    ("unevaluatedProperties", {"structured_outputs": {"json": {
        "type": "object", "unevaluatedProperties": False}}}, "structured_outputs",
     "unevaluatedProperties"),
    ("not", {_JS: json_schema_format("x", {"not": {"type": "string"}})}, _JS, "not"),
    ("missing $ref", {_JS: json_schema_format("x", {"$ref": "#/$defs/nowhere"})}, _JS, "nowhere"),
    ("unsatisfiable bounds", {"guided_json": {"type": "integer", "minimum": 9, "maximum": 1}},
     "guided_json", "minimum"),
    ("unknown format", {"guided_json": {"type": "string", "format": "zipcode"}}, "guided_json",
     "zipcode"),
    ("schema text not JSON", {"guided_json": "{not json"}, "guided_json", "not valid JSON"),
    ("schema not an object", {"structured_outputs": {"json": "[1, 2]"}}, "structured_outputs",
     "JSON object"),
    ("bad regex", {"guided_regex": "(unclosed"}, "guided_regex", "unclosed"),
    ("bad pattern in a schema", {"guided_json": {"type": "string", "pattern": "a{3,1}"}},
     "guided_json", "repetition"),
    ("bad Lark", {"guided_grammar": "start: undefined_rule"}, "guided_grammar", "undefined_rule"),
    ("unbalanced Lark", {"structured_outputs": {"grammar": "start: ("}}, "structured_outputs",
     "Expected"),
    ("empty grammar", {"guided_grammar": "  "}, "guided_grammar", "empty"),
    ("empty choice", {"guided_choice": []}, "guided_choice", "empty"),
    ("two constraints", {"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice",
     "only one"),
    ("two in structured_outputs", {"structured_outputs": {"regex": "a", "choice": ["a"]}},
     "structured_outputs", "only one"),
    ("response_format and guided_json", {_JS: {"type": "json_object"}, "guided_json": {}},
     "guided_json", "only one"),
    ("unknown response_format type", {_JS: {"type": "yaml"}}, _JS, "yaml"),
    ("json_schema without its object", {_JS: {"type": "json_schema"}}, _JS, "json_schema"),
    ("misspelt structured_outputs key", {"structured_outputs": {"jsn": {}}}, "jsn", "jsn"),
    ("choice not a list", {"guided_choice": "positive"}, "guided_choice", "array"),
    ("regex not a string", {"guided_regex": 42}, "guided_regex", "str"),
    ("bad backend", {"guided_json": {}, "guided_decoding_backend": "outlines"},
     "guided_decoding_backend", "outlines"),
    ("whitespace pattern alone", {"guided_whitespace_pattern": " *"},
     "guided_whitespace_pattern", "JSON"),
    ("structural tag without triggers", {_JS: {"type": "structural_tag", "structures": [
        {"begin": "<f>", "end": "</f>"}]}}, _JS, "triggers"),
]  # fmt: skip


def test_bad_constraints_are_400s_naming_the_field(server: str) -> None:
    async def one(client: Any, extra: dict[str, Any]) -> Any:
        try:
            await chat(client, "Hi", max_tokens=4, extra_body=extra)
        except openai.BadRequestError as err:
            return err
        return None

    async def work(client: Any) -> list[Any]:
        errors = [await one(client, extra) for _, extra, _, _ in BAD]
        errors.append(await chat(client, "Hi", max_tokens=4))  # still serving
        return errors

    *errors, normal = run(server, work)
    problems = []
    for (what, _, field, reason), err in zip(BAD, errors, strict=True):
        if err is None:
            problems.append(f"{what}: accepted")
            continue
        message = err.body["message"] if isinstance(err.body, dict) else str(err)
        if err.status_code != 400 or field not in message or reason not in message:
            problems.append(f"{what}: {err.status_code} {message!r}")
    assert not problems, "\n".join(problems)
    assert normal.choices[0].message.content
