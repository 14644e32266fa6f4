"""llmcore.chat_template: rendering is byte-identical to transformers' apply_chat_template.

Every fixture template (20 public models' templates, in tests/fixtures) is rendered
by llmcore and by transformers for the same conversations; the two must agree byte for
byte, or both must refuse. Conversations transformers cannot render are listed, with
the reason, in EXPECTED_TRANSFORMERS_FAILURES.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from llmcore.chat_template import ChatTemplate, compile_template, require_template
from llmcore.chat_template import environment as ct
from llmcore.errors import ChatTemplateError, CorruptModelFileError, NoChatTemplateError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
TEMPLATE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.jinja"))


def test_the_template_fixtures_are_in_the_repository() -> None:
    """A missing fixtures folder must fail here, not empty the corpus silently."""
    assert len(TEMPLATE_NAMES) == 20, FIXTURES


def _fixture(name: str) -> str:
    return (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")


# ---- conversations ------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TOOL_CALL = {
    "id": "call12345",  # 9 alphanumerics, as Mistral's templates demand
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
}


@dataclass(frozen=True)
class Conversation:
    messages: list[dict[str, Any]]
    add_generation_prompt: bool = False
    continue_final_message: bool = False
    tools: list[dict[str, Any]] | None = None
    documents: list[dict[str, Any]] | None = None
    variables: dict[str, Any] = field(default_factory=dict)


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "You are a terse assistant. Ünïcödé ok <b>."}

CONVERSATIONS: dict[str, Conversation] = {
    "system_user": Conversation([SYSTEM, _user("Hello!")], add_generation_prompt=True),
    "user_no_prompt": Conversation([_user("Hello!")]),
    "multi_turn": Conversation(
        [_user("Hi"), _assistant("Hello, how can I help?"), _user("Name a colour.")],
        add_generation_prompt=True,
    ),
    "multi_turn_system_closed": Conversation(
        [SYSTEM, _user("Hi"), _assistant("Hello."), _user("2+2?"), _assistant("4")]
    ),
    "continue_final": Conversation(
        [_user("Write a haiku."), _assistant("Autumn moonlight -")],
        continue_final_message=True,
    ),
    "continue_trailing_space": Conversation(
        [_user("Finish the sentence."), _assistant("The answer is ")],
        continue_final_message=True,
    ),
    "continue_parts": Conversation(
        [
            _user("Count."),
            {"role": "assistant", "content": [{"type": "text", "text": "One, two,"}]},
        ],
        continue_final_message=True,
    ),
    "tool_definitions": Conversation(
        [SYSTEM, _user("Weather in Paris?")], add_generation_prompt=True, tools=[WEATHER_TOOL]
    ),
    "tool_call_and_result": Conversation(
        [
            _user("Weather in Paris?"),
            {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
            {"role": "tool", "tool_call_id": "call12345", "content": '{"temp": 21}'},
        ],
        add_generation_prompt=True,
        tools=[WEATHER_TOOL],
    ),
    "tool_call_empty_content": Conversation(
        [
            _user("Weather in Paris?"),
            {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
            {"role": "tool", "tool_call_id": "call12345", "content": '{"temp": 21}'},
            _assistant("It is 21 degrees."),
        ],
        tools=[WEATHER_TOOL],
    ),
    "tool_call_string_arguments": Conversation(
        [
            _user("Weather in Paris?"),
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        **TOOL_CALL,
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call12345", "content": "sunny"},
        ],
        add_generation_prompt=True,
        tools=[WEATHER_TOOL],
    ),
    "content_parts": Conversation(
        [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "First line."}, {"type": "text", "text": "2"}],
            },
        ],
        add_generation_prompt=True,
    ),
    "reasoning_history": Conversation(
        [
            _user("2+2?"),
            {"role": "assistant", "content": "4", "reasoning_content": "Two and two."},
            _user("And 3+3?"),
        ],
        add_generation_prompt=True,
    ),
    "template_kwargs": Conversation(
        [SYSTEM, _user("Hello!")],
        add_generation_prompt=True,
        variables={
            "enable_thinking": False,
            "date_string": "01 Feb 2025",
            "functions": json.dumps([WEATHER_TOOL["function"]]),  # firefunction-v2 reads these
            "datetime": "2025-02-01",
        },
    ),
    "documents": Conversation(
        [_user("What does the doc say?")],
        add_generation_prompt=True,
        tools=[WEATHER_TOOL],  # Command R7B's tool_use variant needs tools beside documents
        documents=[{"title": "Doc A", "text": "The sky is green."}],
    ),
}


def _failing(template: str, conversations: str, reason: str) -> dict[tuple[str, str], str]:
    return {(template, conversation): reason for conversation in conversations.split()}


_PLAIN = (
    "content_parts continue_final continue_parts continue_trailing_space multi_turn "
    "multi_turn_system_closed reasoning_history system_user user_no_prompt"
)
_TOOL_CALLS = "tool_call_and_result tool_call_empty_content tool_call_string_arguments"

# (template, conversation) -> why transformers cannot render it. llmcore must raise
# ChatTemplateError exactly there too.
EXPECTED_TRANSFORMERS_FAILURES: dict[tuple[str, str], str] = {
    **_failing(
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
        f"{_PLAIN} template_kwargs",
        "the tool_use variant loops over `tools` unconditionally; without tools it "
        "iterates None (TypeError)",
    ),
    **_failing(
        "fireworks-ai-llama-3-firefunction-v2",
        f"{_PLAIN} documents tool_definitions {_TOOL_CALLS}",
        "needs the template variables `functions` (a JSON string) and `datetime`, which "
        "only template_kwargs passes (UndefinedError)",
    ),
    **_failing(
        "google-gemma-2-2b-it",
        "content_parts multi_turn_system_closed system_user template_kwargs tool_definitions",
        "raise_exception('System role not supported')",
    ),
    **_failing(
        "google-gemma-2-2b-it",
        _TOOL_CALLS,
        "raise_exception: roles must alternate user/assistant, and a tool message breaks that",
    ),
    **_failing(
        "meetkai-functionary-medium-v3.2",
        "tool_call_and_result tool_call_empty_content",
        "joins tool-call arguments with `+` as a string: dict arguments fail (TypeError); "
        "it renders JSON-string arguments",
    ),
    **{
        (template, "tool_call_and_result"): (
            "transformers drops the assistant's `content: None`, then the template reads "
            "`message.content` (UndefinedError); with content '' it renders"
        )
        for template in (
            "Qwen-Qwen3-0.6B",
            "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
            "ibm-granite-granite-3.3-2B-Instruct",
            "microsoft-Phi-3.5-mini-instruct",
        )
    },
    ("GLM-4.6", "tool_call_string_arguments"): (
        "raise_exception('Invalid tool call arguments passed'): arguments must be an object"
    ),
    ("Qwen3-Coder", "tool_call_string_arguments"): (
        "`arguments|items` needs a mapping; JSON-string arguments fail (TypeError)"
    ),
}


# ---- the reference side -------------------------------------------------------------------


def _reference_view(messages: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """What transformers is given as the reference: the messages as sent, except that
    content parts become their joined text where llmcore promises that (templates of
    the "string" format, and tool results). Written out independently of llmcore."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and (fmt == "string" or message["role"] == "tool"):
            message = {**message, "content": "\n".join(part["text"] for part in content)}
        out.append(message)
    return out


class _FixedDatetime(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> _FixedDatetime:
        return cls(2025, 3, 14, 15, 9, 26)


@pytest.fixture(scope="module")
def hf_tokenizer() -> Any:
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    model = tokenizers.models.WordLevel({"<unk>": 0}, unk_token="<unk>")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(model), bos_token="<s>", eos_token="</s>"
    )


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """strftime_now() sees the same instant on both sides."""
    hf_utils = pytest.importorskip("transformers.utils.chat_template_utils")
    monkeypatch.setattr(hf_utils, "datetime", _FixedDatetime)
    monkeypatch.setattr(ct, "datetime", _FixedDatetime)
    yield


def _hf_render(tokenizer: Any, source: str, conv: Conversation, messages: Any) -> str:
    return str(
        tokenizer.apply_chat_template(
            messages,
            chat_template=source,
            tokenize=False,
            add_generation_prompt=conv.add_generation_prompt,
            continue_final_message=conv.continue_final_message,
            tools=conv.tools,
            documents=conv.documents,
            **conv.variables,
        )
    )


def _llmcore_render(tokenizer: Any, template: ChatTemplate, conv: Conversation) -> str:
    return template.render(
        conv.messages,
        add_generation_prompt=conv.add_generation_prompt,
        continue_final_message=conv.continue_final_message,
        tools=conv.tools,
        documents=conv.documents,
        **{**tokenizer.special_tokens_map, **conv.variables},
    )


# ---- byte-identity with transformers -----------------------------------------------------


@pytest.mark.parametrize("conv_name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("template_name", TEMPLATE_NAMES or ["<no fixtures>"])
@pytest.mark.usefixtures("fixed_clock")
def test_matches_transformers(hf_tokenizer: Any, template_name: str, conv_name: str) -> None:
    source = _fixture(template_name)
    conv = CONVERSATIONS[conv_name]
    template = ChatTemplate(source)
    reference_messages = _reference_view(conv.messages, template.content_format)
    reason = EXPECTED_TRANSFORMERS_FAILURES.get((template_name, conv_name))
    if reason is not None:
        with pytest.raises(Exception) as hf_error:
            _hf_render(hf_tokenizer, source, conv, reference_messages)
        with pytest.raises(ChatTemplateError) as ours:
            _llmcore_render(hf_tokenizer, template, conv)
        assert ours.value.status == 400
        assert str(hf_error.value) in str(ours.value)  # the same failure, said the same way
        return
    expected = _hf_render(hf_tokenizer, source, conv, reference_messages)
    assert _llmcore_render(hf_tokenizer, template, conv) == expected


def test_expected_failures_name_real_cases() -> None:
    for template_name, conv_name in EXPECTED_TRANSFORMERS_FAILURES:
        assert conv_name in CONVERSATIONS
        if FIXTURES.is_dir():
            assert template_name in TEMPLATE_NAMES


# ---- the environment's HF features, each against transformers ----------------------------

FEATURE_TEMPLATES = {
    "tojson": "{{ messages[0] | tojson }}|{{ tools | tojson(indent=2) }}",
    "tojson_options": "{{ messages | tojson(sort_keys=True, separators=(',', ':')) }}",
    "tojson_ascii": "{{ messages[0].content | tojson(ensure_ascii=True) }}",
    "generation": (
        "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}"
        "{% set x = 'in' %}{{ m.content }}{% endgeneration %}{% endif %}{% endfor %}"
        "{{ x is defined }}"
    ),
    "loopcontrols": (
        "{% for m in messages %}{% if loop.index0 == 0 %}{% continue %}{% endif %}"
        "{{ m.role }}{% break %}{% endfor %}"
    ),
    "trim_and_lstrip": "  {% for m in messages %}\n    {{ m.content }}\n  {% endfor %}\nend",
    "strftime_now": "{{ strftime_now('%Y-%m-%d %H:%M %A') }}",
    "dict_and_namespace": (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
        "{% endfor %}{{ ns.n }}{{ dict(a=1, b=[2]) | tojson }}{{ dict.fromkeys('ab', 0) }}"
    ),
    "variables": "{{ bos_token }}{{ custom | tojson }}{{ add_generation_prompt }}{{ documents }}",
    "reasoning_aliases": "{{ messages[1] | tojson }}",
    "none_dropped": "{{ messages[0].name is defined }}{{ messages[0] | tojson }}",
}
FEATURE_MESSAGES: list[dict[str, Any]] = [
    {"role": "user", "content": 'Grüße <b> & "quotes"', "name": None},
    {"role": "assistant", "content": "Hi", "reasoning": "thought"},
    {"role": "user", "content": "Bye"},
]


@pytest.mark.parametrize("feature", sorted(FEATURE_TEMPLATES))
@pytest.mark.usefixtures("fixed_clock")
def test_environment_feature_matches_transformers(hf_tokenizer: Any, feature: str) -> None:
    source = FEATURE_TEMPLATES[feature]
    conv = Conversation(FEATURE_MESSAGES, tools=[WEATHER_TOOL], variables={"custom": ["x", 1]})
    expected = _hf_render(hf_tokenizer, source, conv, conv.messages)
    assert _llmcore_render(hf_tokenizer, ChatTemplate(source), conv) == expected


def test_render_leaves_the_callers_messages_alone() -> None:
    messages = [_user("Hi"), _assistant("Hello")]
    snapshot = json.loads(json.dumps(messages))
    ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}").render(
        messages, continue_final_message=True
    )
    assert messages == snapshot


# ---- content format -----------------------------------------------------------------------

OPENAI_FORMAT_FIXTURES = {"GLM-4.6", "Mistral-Small-3.2-24B-Instruct-2506", "moonshotai-Kimi-K2"}


@pytest.mark.parametrize("template_name", TEMPLATE_NAMES or ["<no fixtures>"])
def test_content_format_of_fixtures(template_name: str) -> None:
    expected = "openai" if template_name in OPENAI_FORMAT_FIXTURES else "string"
    assert ChatTemplate(_fixture(template_name)).content_format == expected


_LOOP_OVER_ITEM = (
    "{% for m in messages %}{% for p in m['content'] %}{{ p }}{% endfor %}{% endfor %}"
)
_LOOP_OVER_ATTR = "{% for m in messages %}{% for p in m.content %}{{ p }}{% endfor %}{% endfor %}"
_LOOP_OVER_ALIAS = (
    "{% set rest = messages[1:] %}{% set loop_msgs = rest %}{% for m in loop_msgs %}"
    "{% for p in m.content | list %}{{ p }}{% endfor %}{% endfor %}"
)
_PRINT_CONTENT = "{% for m in messages %}{{ m.content }}{% endfor %}"
_LOOP_OVER_TOOL = "{% for t in tools %}{% for p in t.content %}{{ p }}{% endfor %}{% endfor %}"
_LOOP_IN_MACRO = (
    "{% macro show(c) %}{% for p in c %}{{ p }}{% endfor %}{% endmacro %}"
    "{% for m in messages %}{{ show(m.content) }}{% endfor %}"
)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (_LOOP_OVER_ITEM, "openai"),
        (_LOOP_OVER_ATTR, "openai"),
        (_LOOP_OVER_ALIAS, "openai"),
        (_PRINT_CONTENT, "string"),
        (_LOOP_OVER_TOOL, "string"),
        (_LOOP_IN_MACRO, "string"),  # like vLLM, we do not follow content into macros
    ],
)
def test_content_format_detection(source: str, expected: str) -> None:
    assert ChatTemplate(source).content_format == expected


PARTS_ONLY = (
    "{% for m in messages %}{% for p in m.content %}[{{ p.type }}:{{ p.text }}]{% endfor %}"
    "|{% endfor %}"
)
PARTS_OR_STRING = (
    "{% for m in messages %}{% if m.content is string %}S:{{ m.content }}"
    "{% else %}{% for p in m.content %}P:{{ p.text }}{% endfor %}{% endif %}|{% endfor %}"
)
TWO_TEXT_PARTS = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]


def test_string_format_joins_text_parts() -> None:
    template = ChatTemplate("{% for m in messages %}{{ m.content }}|{% endfor %}")
    assert template.content_format == "string"
    assert template.render([{"role": "user", "content": TWO_TEXT_PARTS}]) == "a\nb|"


def test_string_format_refuses_other_parts() -> None:
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    template = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}")
    with pytest.raises(ChatTemplateError, match="image_url") as error:
        template.render([{"role": "user", "content": [*TWO_TEXT_PARTS, image]}])
    assert error.value.status == 400


def test_openai_format_wraps_strings_for_a_template_that_only_takes_parts(
    hf_tokenizer: Any,
) -> None:
    template = ChatTemplate(PARTS_ONLY)
    messages: list[dict[str, Any]] = [_user("hi"), {"role": "user", "content": TWO_TEXT_PARTS}]
    wrapped: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        messages[1],
    ]
    expected = _hf_render(hf_tokenizer, PARTS_ONLY, Conversation(wrapped), wrapped)
    assert template.render(messages) == expected == "[text:hi]|[text:a][text:b]|"


def test_openai_format_keeps_strings_for_a_template_that_takes_both() -> None:
    template = ChatTemplate(PARTS_OR_STRING)
    assert template.content_format == "openai"
    messages = [_user("hi"), {"role": "user", "content": TWO_TEXT_PARTS}]
    assert template.render(messages) == "S:hi|P:aP:b|"


def test_tool_results_become_strings_in_the_openai_format() -> None:
    template = ChatTemplate(PARTS_OR_STRING)
    image = {"type": "image_url", "image_url": {"url": "u"}}
    tool_text = {"role": "tool", "content": TWO_TEXT_PARTS}
    tool_image = {"role": "tool", "content": [image]}
    assert template.render([tool_text, tool_image]) == "S:a\nb|P:|"
    assert ChatTemplate(PARTS_ONLY).render([{"role": "tool", "content": "x"}]) == (
        "[:]|"  # a string tool result is left a string, whatever the template loops over
    )


def test_content_format_override() -> None:
    joined = ChatTemplate(PARTS_OR_STRING, content_format="string")
    assert joined.content_format == "string"
    assert joined.render([{"role": "user", "content": TWO_TEXT_PARTS}]) == "S:a\nb|"
    parts = ChatTemplate("{{ messages[0].content }}", content_format="openai")
    assert parts.content_format == "openai"
    assert parts.render([_user("hi")]) == "[{'type': 'text', 'text': 'hi'}]"
    with pytest.raises(ChatTemplateError, match="content_format"):
        ChatTemplate("x", content_format="parts")  # type: ignore[arg-type]


# ---- continue_final_message ---------------------------------------------------------------


def test_continue_with_generation_prompt_is_refused(hf_tokenizer: Any) -> None:
    source = "{% for m in messages %}{{ m.content }}{% endfor %}"
    conv = Conversation([_user("a")], add_generation_prompt=True, continue_final_message=True)
    with pytest.raises(ValueError):
        _hf_render(hf_tokenizer, source, conv, conv.messages)
    with pytest.raises(ChatTemplateError, match="cannot both be set"):
        _llmcore_render(hf_tokenizer, ChatTemplate(source), conv)


@pytest.mark.parametrize(
    "source",
    [
        "{% for m in messages %}{{ m.content[:3] }}{% endfor %}",  # cuts the message
        "{% for m in messages %}{{ m.role }}{% endfor %}",  # never shows content
        "{{ messages | length }}",  # never names `content`
    ],
)
def test_continue_when_the_template_loses_the_message(hf_tokenizer: Any, source: str) -> None:
    conv = Conversation([_user("Hello"), _assistant("Once upon")], continue_final_message=True)
    with pytest.raises(ValueError):
        _hf_render(hf_tokenizer, source, conv, conv.messages)
    with pytest.raises(ChatTemplateError, match="continue_final_message"):
        _llmcore_render(hf_tokenizer, ChatTemplate(source), conv)


def test_continue_without_text_to_continue() -> None:
    template = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}")
    no_content = [_user("a"), {"role": "assistant", "content": None, "tool_calls": []}]
    with pytest.raises(ChatTemplateError, match="no content"):
        template.render(no_content, continue_final_message=True)
    only_image = [{"role": "assistant", "content": [{"type": "image_url", "image_url": {}}]}]
    with pytest.raises(ChatTemplateError, match="no text"):
        ChatTemplate(PARTS_OR_STRING).render(only_image, continue_final_message=True)


# ---- errors -------------------------------------------------------------------------------


def test_raise_exception_carries_the_templates_message() -> None:
    template = ChatTemplate("{{ raise_exception('Only user and assistant roles!') }}")
    with pytest.raises(ChatTemplateError) as error:
        template.render([_user("hi")])
    assert str(error.value) == "Only user and assistant roles!"
    assert error.value.status == 400 and error.value.type == "invalid_request_error"


def test_syntax_error_at_construction() -> None:
    with pytest.raises(ChatTemplateError, match="line 2") as error:
        ChatTemplate("{% for m in messages %}\n{{ m.content }\n{% endfor %}")
    assert error.value.status == 400


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("{{ messages[0].content.nope() }}", "line 1.*has no attribute 'nope'"),
        ("\n{{ 1 + messages[0].content }}", "line 2.*TypeError"),
        ("{{ messages.append(1) }}", "unsafe"),  # the sandbox is immutable
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
        ("{% set ns = namespace(_x=1) %}", "underscore"),
        ("{% set ns = namespace() %}{% set ns._y = 1 %}", "underscore"),
        ("{{ messages | tojson(indent=[1]) }}", "TypeError"),
    ],
)
def test_render_failures_become_chat_template_errors(source: str, match: str) -> None:
    with pytest.raises(ChatTemplateError, match=match) as error:
        ChatTemplate(source).render([_user("hi")])
    assert error.value.status == 400


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"messages": []}, "empty conversation"),
        ({"messages": ["hi"]}, "must be an object"),
        ({"messages": [_user("hi")], "tools": ["get_weather"]}, "tools must be a JSON object"),
        ({"messages": [_user("hi")], "documents": [3]}, "documents must be a JSON object"),
    ],
)
def test_bad_inputs(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ChatTemplateError, match=match):
        ChatTemplate("{{ messages }}").render(**kwargs)


# ---- compile once -------------------------------------------------------------------------


def test_a_source_compiles_once() -> None:
    source = f"{{{{ messages[0].content }}}} compile-once {id(object())}"
    before = compile_template.cache_info()
    first, second = ChatTemplate(source), ChatTemplate(source)
    after = compile_template.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    assert compile_template(source) is compile_template(source)
    assert (
        first.render([_user("x")])
        == second.render([_user("x")])
        == source.replace("{{ messages[0].content }}", "x")
    )


# ---- where a template comes from ----------------------------------------------------------


def _model_folder(tmp_path: Path, jinja: str | None = None, config: Any = None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(parents=True, exist_ok=True)
    if jinja is not None:
        (folder / "chat_template.jinja").write_text(jinja, encoding="utf-8")
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _resolved_source(*args: Any, **kwargs: Any) -> str | None:
    template = ChatTemplate.resolve(*args, **kwargs)
    return None if template is None else template.source


def test_resolve_override_file_beats_the_model(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, jinja="{{ 'folder' }}")
    override = tmp_path / "mine.jinja"
    override.write_text("{{ 'override file' }}", encoding="utf-8")
    assert _resolved_source(folder, override=str(override)) == "{{ 'override file' }}"


def test_resolve_override_inline_text(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, jinja="{{ 'folder' }}")
    assert _resolved_source(folder, override="{{ 'inline' }}") == "{{ 'inline' }}"
    assert _resolved_source(None, override="{{ 'x' * 300 }}" + "y" * 300) is not None


def test_resolve_override_that_is_neither_file_nor_template(tmp_path: Path) -> None:
    with pytest.raises(ChatTemplateError, match="not a file"):
        ChatTemplate.resolve(None, override=str(tmp_path / "missing.jinja"))


def test_resolve_chat_template_jinja_beats_tokenizer_config(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, jinja="{{ 'jinja' }}", config={"chat_template": "{{ 'c' }}"})
    assert _resolved_source(folder, gguf_template="{{ 'gguf' }}") == "{{ 'jinja' }}"


def test_resolve_named_jinja_file(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, jinja="{{ 'default' }}")
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "tool_use.jinja").write_text("{{ 'tools' }}")
    assert _resolved_source(folder, name="tool_use") == "{{ 'tools' }}"
    assert _resolved_source(folder, name="rag") == "{{ 'default' }}"
    assert _resolved_source(folder) == "{{ 'default' }}"


def test_resolve_tokenizer_config_string(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, config={"chat_template": "{{ 'config' }}", "x": 1})
    assert _resolved_source(folder, gguf_template="{{ 'gguf' }}") == "{{ 'config' }}"


def test_resolve_tokenizer_config_named_list(tmp_path: Path) -> None:
    entries = [
        {"name": "rag", "template": "{{ 'rag' }}"},
        {"name": "default", "template": "{{ 'default' }}"},
        {"name": "tool_use", "template": "{{ 'tool_use' }}"},
    ]
    folder = _model_folder(tmp_path, config={"chat_template": entries})
    assert _resolved_source(folder, name="tool_use") == "{{ 'tool_use' }}"
    assert _resolved_source(folder) == "{{ 'default' }}"
    assert _resolved_source(folder, name="missing") == "{{ 'default' }}"
    no_default = _model_folder(tmp_path / "b", config={"chat_template": entries[::2]})
    assert _resolved_source(no_default) == "{{ 'rag' }}"


def test_resolve_gguf_template(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, config={"bos_token": "<s>"})
    assert _resolved_source(folder, gguf_template="{{ 'gguf' }}") == "{{ 'gguf' }}"
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"GGUF")
    assert _resolved_source(gguf_file, gguf_template="{{ 'gguf' }}") == "{{ 'gguf' }}"


def test_resolve_nothing_then_require_template(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, config={"bos_token": "<s>"})
    assert ChatTemplate.resolve(folder) is None
    assert ChatTemplate.resolve(None) is None
    with pytest.raises(NoChatTemplateError) as error:
        require_template(ChatTemplate.resolve(folder))
    assert str(error.value) == "this model has no chat template; pass --chat-template"
    assert error.value.status == 400
    template = ChatTemplate("{{ 1 }}")
    assert require_template(template) is template


def test_resolve_passes_the_content_format(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, jinja=PARTS_OR_STRING)
    template = ChatTemplate.resolve(folder, content_format="string")
    assert template is not None and template.content_format == "string"


@pytest.mark.parametrize(
    "config_text",
    ["{not json", '{"chat_template": 3}', '{"chat_template": [{"name": "default"}]}'],
)
def test_resolve_corrupt_tokenizer_config(tmp_path: Path, config_text: str) -> None:
    folder = _model_folder(tmp_path)
    (folder / "tokenizer_config.json").write_text(config_text, encoding="utf-8")
    with pytest.raises(CorruptModelFileError, match=r"tokenizer_config\.json"):
        ChatTemplate.resolve(folder)
