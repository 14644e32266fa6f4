"""Every flag of `vllm serve`, and what `llmcore serve` does with it.

A `VLLMFlag` gives one vLLM flag its disposition:

- SAME: llmcore has the flag under the same name and meaning (in `flags`);
- ALIAS: llmcore has the flag under another name (`note` names it); the vLLM
  spelling is an option string of that flag, in `flags`;
- HARMLESS: accepted, changes nothing here, and a warning says so (`note` is why);
  with `accepts`, only those values are harmless and others are refused;
- REFUSED: a one-line usage error (exit 2) naming the reason (`note`).

`add_vllm_flags` adds the HARMLESS and REFUSED flags to a parser (hidden from
`--help`), so no vLLM flag gets argparse's "unrecognized arguments"; `check_vllm_flags`
warns or refuses after parsing. docs/cli.md's table is `markdown_table()`'s output
(tests/llmcore/test_vllm_flags.py checks that they agree, and that every SAME and
ALIAS flag is a real option of the parser).

Invariant: a vLLM flag is in `VLLM_FLAGS` once; a switch (`kind="bool"`) also takes
its `--no-` form, as vLLM's BooleanOptionalAction flags do, and only its `--` form
is refused.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

log = logging.getLogger("llmcore.http")

Kind = Literal["bool", "value", "values"]  # a switch, one value, one or more values


class Disposition(Enum):
    SAME = "same"
    ALIAS = "alias"
    HARMLESS = "accepted, no effect"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class VLLMFlag:
    name: str  # "--tensor-parallel-size"
    disposition: Disposition
    note: str = ""  # ALIAS: the llmcore flag; HARMLESS, REFUSED: the reason
    kind: Kind = "value"
    short: tuple[str, ...] = ()  # vLLM's short forms ("-tp")
    accepts: tuple[str, ...] = ()  # HARMLESS: only these values; others are refused

    @property
    def dest(self) -> str:
        return "vllm_" + self.name.lstrip("-").replace("-", "_")


S, A, H, R = Disposition.SAME, Disposition.ALIAS, Disposition.HARMLESS, Disposition.REFUSED

_CPU = "llmcore runs one engine per model in this process"
_MM = "llmcore serves no multimodal models"
_LORA = "llmcore has no LoRA adapters"
_SPEC = "llmcore has no speculative decoding"
_HUB = "llmcore loads local files only; nothing is downloaded"
_CUDA = "llmcore has no torch.compile, and its CUDA graphs and kernels are not configurable"
_KV = "llmcore's KV cache is sized by --kv-cache-memory"
_TRACE = "llmcore has no tracing or extra engine metrics"
_LB = "llmcore balances data-parallel replicas itself (--replicas, --routing)"


def _same(name: str, kind: Kind = "value") -> VLLMFlag:
    return VLLMFlag(name, S, kind=kind)


def _alias(name: str, target: str, kind: Kind = "value") -> VLLMFlag:
    return VLLMFlag(name, A, target, kind=kind)


def _ok(name: str, why: str, kind: Kind = "value", *, short: tuple[str, ...] = (),
        accepts: tuple[str, ...] = ()) -> VLLMFlag:  # fmt: skip
    return VLLMFlag(name, H, why, kind, short, accepts)


def _no(name: str, why: str, kind: Kind = "value", *, short: tuple[str, ...] = ()) -> VLLMFlag:
    return VLLMFlag(name, R, why, kind, short)


# fmt: off
VLLM_FLAGS: tuple[VLLMFlag, ...] = (
    # ---- the server (vllm/entrypoints/openai/cli_args.py) ----
    _same("--config"),
    _no("--headless", "multi-node data parallelism: " + _CPU, "bool"),
    _same("--api-server-count"),
    _no("--grpc", "llmcore serves HTTP only (no gRPC server)", "bool"),
    _no("--lora-modules", _LORA, "values"),
    _same("--chat-template"),
    _same("--chat-template-content-format"),
    _same("--trust-request-chat-template", "bool"),
    _no("--default-chat-template-kwargs", "not supported: send chat_template_kwargs per request"),
    _same("--response-role"),
    _same("--return-tokens-as-token-ids", "bool"),
    _same("--enable-auto-tool-choice", "bool"),
    _ok("--exclude-tools-when-tool-choice-none", "tool definitions are rendered as given", "bool"),
    _same("--tool-call-parser"),
    _same("--tool-parser-plugin"),
    _no("--tool-server", "llmcore runs no built-in tools"),
    _ok("--log-config-file", "logging is configured by --log-level"),
    _same("--max-log-len"),
    _same("--enable-prompt-tokens-details", "bool"),
    _ok("--enable-per-request-metrics", "responses carry no per-request timings", "bool"),
    _same("--enable-server-load-tracking", "bool"),
    _same("--enable-force-include-usage", "bool"),
    _same("--enable-tokenizer-info-endpoint", "bool"),
    _ok("--enable-log-outputs", "outputs are not logged, only requests", "bool"),
    _ok("--enable-log-deltas", "outputs are not logged", "bool"),
    _ok("--cohere-is-reasoning-model", "llmcore serves no Cohere API", "bool"),
    _ok("--cohere-format", "llmcore serves no Cohere API"),
    _ok("--log-error-stack", "unexpected errors are always logged with their stack", "bool"),
    _no("--tokens-only", "llmcore serves the whole OpenAI API", "bool"),
    _ok("--fingerprint-mode", "responses carry no system_fingerprint"),
    _ok("--fingerprint-value", "responses carry no system_fingerprint"),
    _same("--host"),
    _same("--port"),
    _ok("--data-parallel-supervisor-port", _LB),
    _ok("--dp-supervisor-probe-interval-s", _LB),
    _ok("--dp-supervisor-probe-timeout-s", _LB),
    _ok("--dp-supervisor-probe-failure-threshold", _LB),
    _same("--uds"),
    _alias("--uvicorn-log-level", "--log-level"),
    _alias("--disable-uvicorn-access-log", "--no-access-log", "bool"),
    _ok("--disable-access-log-for-endpoints", "the access log is all or nothing (--no-access-log)"),
    _same("--allow-credentials", "bool"),
    _same("--allowed-origins"),
    _same("--allowed-methods"),
    _same("--allowed-headers"),
    _same("--api-key", "values"),
    _same("--ssl-keyfile"),
    _same("--ssl-certfile"),
    _same("--ssl-ca-certs"),
    _ok("--enable-ssl-refresh", "certificates are read at start; restart to renew them", "bool"),
    _same("--ssl-cert-reqs"),
    _same("--ssl-ciphers"),
    _same("--root-path"),
    _no("--middleware", "llmcore has no ASGI framework to add middleware to"),
    _same("--enable-request-id-headers", "bool"),
    _ok("--disable-fastapi-docs", "llmcore has no Swagger UI; /openapi.json stays", "bool"),
    _alias("--h11-max-incomplete-event-size", "--max-header-size"),
    _alias("--h11-max-header-count", "--max-header-count"),
    _ok("--enable-offline-docs", "llmcore has no Swagger UI", "bool"),
    _ok("--enable-flash-late-interaction", "llmcore has no late-interaction scoring", "bool"),
    # ---- the engine (vllm/engine/arg_utils.py, AsyncEngineArgs) ----
    _same("--enable-log-requests", "bool"),
    _ok("--disable-log-requests", "requests are not logged unless --enable-log-requests", "bool"),
    _same("--disable-log-stats", "bool"),
    _ok("--aggregate-engine-logging", _LB, "bool"),
    _ok("--fail-on-environ-validation", "llmcore validates no vLLM environment", "bool"),
    _alias("--shutdown-timeout", "--shutdown-grace"),
    _ok("--gdn-prefill-backend", _CUDA),
    # ModelConfig
    _same("--model"),
    _ok("--runner", "use --task generate|embed", accepts=("auto", "generate")),
    _ok("--convert", "llmcore converts no models (use --task embed for encoders)",
        accepts=("auto", "none")),
    _same("--task", "values"),
    _same("--tokenizer"),
    _ok("--tokenizer-mode", "llmcore reads tokenizer.json or the GGUF vocabulary",
        accepts=("auto", "hf", "slow")),
    _ok("--trust-remote-code", "llmcore runs no code from model folders", "bool"),
    _same("--dtype"),
    _same("--seed"),
    _no("--hf-config-path", "config.json is read from the model folder"),
    _ok("--allowed-local-media-path", _MM),
    _ok("--allowed-media-domains", _MM, "values"),
    _no("--revision", _HUB),
    _ok("--code-revision", "llmcore runs no code from model folders"),
    _no("--tokenizer-revision", _HUB),
    _same("--max-model-len"),
    _same("--quantization"),
    _no("--quantization-config", "llmcore has no quantization methods to configure"),
    _ok("--allow-deprecated-quantization", "no quantization method is deprecated here", "bool"),
    _same("--enforce-eager", "bool"),
    _no("--enable-return-routed-experts", "llmcore does not report MoE routing", "bool"),
    _same("--max-logprobs"),
    _ok("--logprobs-mode", "logprobs are the model's raw log-softmax",
        accepts=("raw_logprobs",)),
    _ok("--use-fp64-gumbel", "llmcore samples with torch.multinomial", "bool"),
    _no("--disable-sliding-window", "sliding-window models keep their window", "bool"),
    _ok("--disable-cascade-attn", _CUDA, "bool"),
    _no("--skip-tokenizer-init", "llmcore's API needs the tokenizer", "bool"),
    _no("--enable-prompt-embeds", "prompts are tokens or text", "bool"),
    _same("--served-model-name", "values"),
    _ok("--config-format", "config.json (or GGUF metadata) is read", accepts=("auto", "hf")),
    _ok("--hf-token", _HUB),
    _no("--hf-overrides", "the model's config is used as it is"),
    _no("--pooler-config", "pooling follows the model (sentence-transformers config)"),
    _no("--override-pooler-config", "pooling follows the model (sentence-transformers config)"),
    _ok("--generation-config", "generation_config.json is not read for defaults",
        accepts=("auto", "vllm")),
    _no("--override-generation-config", "generation_config.json is not read for defaults"),
    _no("--enable-sleep-mode", "llmcore has no sleep mode", "bool"),
    _ok("--enable-cumem-allocator", _CUDA, "bool"),
    _ok("--model-impl", "llmcore's own model code runs", accepts=("auto", "vllm")),
    _no("--override-attention-dtype", "attention runs in the model's dtype"),
    _no("--logits-processors", "llmcore loads no custom logits processors", "values"),
    _no("--io-processor-plugin", "llmcore has no IO processor plugins"),
    _ok("--renderer-num-workers", "chat templates render on one worker thread"),
    _ok("--max-seq-len-to-capture", _CUDA),
    _no("--rope-scaling", "the model's config is used as it is"),
    _no("--rope-theta", "the model's config is used as it is"),
    # LoadConfig
    _ok("--load-format", "llmcore reads .gguf and .safetensors",
        accepts=("auto", "safetensors", "gguf")),
    _ok("--download-dir", _HUB),
    _ok("--safetensors-load-strategy", "safetensors are memory-mapped"),
    _ok("--safetensors-prefetch-num-threads", "safetensors are memory-mapped"),
    _ok("--safetensors-prefetch-block-size", "safetensors are memory-mapped"),
    _no("--model-loader-extra-config", "llmcore has one model loader"),
    _ok("--ignore-patterns", _HUB, "values"),
    _ok("--use-tqdm-on-load", "loading shows no progress bar", "bool"),
    _ok("--pt-load-map-location", "llmcore loads no .pt/.bin files"),
    # AttentionConfig, MambaConfig, structured outputs
    _ok("--attention-backend", _CUDA),
    _ok("--mamba-backend", "llmcore serves no Mamba models"),
    _ok("--enable-mamba-cache-stochastic-rounding", "llmcore serves no Mamba models", "bool"),
    _ok("--mamba-cache-philox-rounds", "llmcore serves no Mamba models"),
    _same("--reasoning-parser"),
    _same("--reasoning-parser-plugin"),
    _ok("--guided-decoding-backend", "structured outputs always use llguidance",
        accepts=("auto", "guidance", "llguidance")),
    # ParallelConfig
    _ok("--distributed-executor-backend", _CPU),
    _ok("--pipeline-parallel-size", "no pipeline parallelism: " + _CPU, short=("-pp",),
        accepts=("1",)),
    _ok("--master-addr", _CPU),
    _ok("--master-port", _CPU),
    _ok("--nnodes", "one node: " + _CPU, short=("-n",), accepts=("1",)),
    _ok("--node-rank", "one node: " + _CPU, short=("-r",), accepts=("0",)),
    _ok("--distributed-timeout-seconds", _CPU),
    _ok("--cpu-distributed-timeout-seconds", _CPU),
    _ok("--numa-bind", "llmcore does not bind to NUMA nodes", "bool"),
    _ok("--numa-bind-nodes", "llmcore does not bind to NUMA nodes", "values"),
    _ok("--numa-bind-cpus", "llmcore does not bind to NUMA nodes", "values"),
    _ok("--tensor-parallel-size", "no tensor parallelism: " + _CPU, short=("-tp",),
        accepts=("1",)),
    _ok("--decode-context-parallel-size", "no context parallelism: " + _CPU,
        short=("-dcp",), accepts=("1",)),
    _ok("--dcp-comm-backend", _CPU),
    _ok("--dcp-kv-cache-interleave-size", _CPU),
    _ok("--cp-kv-cache-interleave-size", _CPU),
    _ok("--prefill-context-parallel-size", "no context parallelism: " + _CPU,
        short=("-pcp",), accepts=("1",)),
    _alias("--data-parallel-size", "--replicas"),
    _ok("--data-parallel-rank", _LB, short=("-dpn",), accepts=("0",)),
    _ok("--data-parallel-start-rank", _LB, short=("-dpr",), accepts=("0",)),
    _ok("--data-parallel-size-local", _LB, short=("-dpl",), accepts=("1",)),
    _ok("--data-parallel-address", _LB, short=("-dpa",)),
    _ok("--data-parallel-rpc-port", _LB, short=("-dpp",)),
    _ok("--data-parallel-backend", _LB, short=("-dpb",)),
    _no("--data-parallel-hybrid-lb", _LB, "bool", short=("-dph",)),
    _no("--data-parallel-external-lb", _LB, "bool", short=("-dpe",)),
    _no("--data-parallel-multi-port-external-lb", _LB, "bool", short=("-dpm",)),
    _no("--enable-expert-parallel", "no expert parallelism: " + _CPU, "bool", short=("-ep",)),
    _ok("--enable-ep-weight-filter", "no expert parallelism", "bool"),
    _ok("--all2all-backend", "no expert parallelism"),
    _no("--enable-dbo", "no dual-batch overlap", "bool"),
    _ok("--ubatch-size", "no dual-batch overlap"),
    _no("--enable-elastic-ep", "no expert parallelism", "bool"),
    _ok("--dbo-decode-token-threshold", "no dual-batch overlap"),
    _ok("--dbo-prefill-token-threshold", "no dual-batch overlap"),
    _ok("--disable-nccl-for-dp-synchronization", "no data parallelism", "bool"),
    _no("--enable-eplb", "no expert parallelism", "bool"),
    _ok("--eplb-config", "no expert parallelism"),
    _ok("--expert-placement-strategy", "no expert parallelism"),
    _ok("--max-parallel-loading-workers", "models load on one thread"),
    _ok("--ray-workers-use-nsight", _CPU, "bool"),
    _ok("--disable-custom-all-reduce", _CPU, "bool"),
    _ok("--worker-cls", _CPU, accepts=("auto",)),
    _no("--worker-extension-cls", "llmcore loads no worker extensions"),
    # CacheConfig
    _same("--block-size"),
    _ok("--gpu-memory-utilization", _KV),
    _alias("--kv-cache-memory-bytes", "--kv-cache-memory"),
    _same("--kv-cache-dtype"),
    _ok("--num-gpu-blocks-override", _KV),
    _alias("--enable-prefix-caching", "--no-prefix-caching (negated)", "bool"),
    _ok("--prefix-caching-hash-algo", "llmcore's block hash is fixed (SHA-256)"),
    _ok("--prefix-cache-retention-interval", "cached blocks are evicted least recently used"),
    _ok("--calculate-kv-scales", "the KV cache is not quantized", "bool"),
    _ok("--kv-cache-dtype-skip-layers", "the KV cache is not quantized", "values"),
    _ok("--kv-sharing-fast-prefill", _CUDA, "bool"),
    _ok("--mamba-cache-dtype", "llmcore serves no Mamba models"),
    _ok("--mamba-ssm-cache-dtype", "llmcore serves no Mamba models"),
    _ok("--mamba-block-size", "llmcore serves no Mamba models"),
    _ok("--mamba-cache-mode", "llmcore serves no Mamba models"),
    _no("--kv-offloading-size", "llmcore does not offload the KV cache"),
    _ok("--kv-offloading-backend", "llmcore does not offload the KV cache"),
    _ok("--swap-space", _KV),
    # OffloadConfig
    _ok("--offload-backend", "llmcore does not offload weights"),
    _ok("--cpu-offload-gb", "llmcore does not offload weights", accepts=("0",)),
    _ok("--cpu-offload-params", "llmcore does not offload weights", "values"),
    _ok("--offload-group-size", "llmcore does not offload weights"),
    _ok("--offload-num-in-group", "llmcore does not offload weights"),
    _ok("--offload-prefetch-step", "llmcore does not offload weights"),
    _ok("--offload-params", "llmcore does not offload weights", "values"),
    # MultiModalConfig
    _ok("--language-model-only", _MM, "bool"),
    _ok("--limit-mm-per-prompt", _MM),
    _no("--enable-mm-embeds", _MM, "bool"),
    _ok("--media-io-kwargs", _MM),
    _ok("--mm-processor-kwargs", _MM),
    _ok("--mm-processor-cache-gb", _MM),
    _ok("--mm-processor-cache-type", _MM),
    _ok("--mm-shm-cache-max-object-size-mb", _MM),
    _no("--mm-encoder-only", _MM, "bool"),
    _ok("--mm-encoder-tp-mode", _MM),
    _ok("--mm-encoder-attn-backend", _MM),
    _ok("--mm-encoder-attn-dtype", _MM),
    _ok("--mm-encoder-fp8-scale-path", _MM),
    _ok("--mm-encoder-fp8-scale-save-path", _MM),
    _ok("--mm-encoder-fp8-scale-save-margin", _MM),
    _ok("--interleave-mm-strings", _MM, "bool"),
    _ok("--skip-mm-profiling", _MM, "bool"),
    _ok("--video-pruning-rate", _MM),
    _ok("--mm-tensor-ipc", _MM),
    _ok("--disable-mm-preprocessor-cache", _MM, "bool"),
    # LoRAConfig (inert without --enable-lora, which is refused)
    _no("--enable-lora", _LORA, "bool"),
    _ok("--max-loras", _LORA),
    _ok("--max-lora-rank", _LORA),
    _ok("--lora-dtype", _LORA),
    _ok("--enable-tower-connector-lora", _LORA, "bool"),
    _ok("--max-cpu-loras", _LORA),
    _ok("--fully-sharded-loras", _LORA, "bool"),
    _ok("--lora-target-modules", _LORA, "values"),
    _ok("--default-mm-loras", _LORA),
    _ok("--specialize-active-lora", _LORA, "bool"),
    _ok("--enable-mixed-moe-lora-format", _LORA, "bool"),
    _ok("--lora-extra-vocab-size", _LORA),
    # ObservabilityConfig
    _ok("--show-hidden-metrics-for-version", "/metrics shows vLLM's current names"),
    _ok("--otlp-traces-endpoint", _TRACE),
    _ok("--collect-detailed-traces", _TRACE),
    _ok("--kv-cache-metrics", _TRACE, "bool"),
    _ok("--kv-cache-metrics-sample", _TRACE),
    _ok("--cudagraph-metrics", _TRACE, "bool"),
    _ok("--enable-layerwise-nvtx-tracing", _TRACE, "bool"),
    _ok("--enable-mfu-metrics", _TRACE, "bool"),
    _ok("--enable-logging-iteration-details", _TRACE, "bool"),
    _ok("--enable-mm-processor-stats", _TRACE, "bool"),
    # SchedulerConfig
    _same("--max-num-batched-tokens"),
    _same("--max-num-seqs"),
    _ok("--max-num-partial-prefills", "prefills are chunked by --max-num-batched-tokens"),
    _ok("--max-long-partial-prefills", "prefills are chunked by --max-num-batched-tokens"),
    _ok("--long-prefill-token-threshold", "prefills are chunked by --max-num-batched-tokens"),
    _ok("--mixed-prefill-step-latency-ms", "prefills are chunked by --max-num-batched-tokens"),
    _ok("--scheduling-policy", "requests are admitted by (priority, arrival); priority "
        "defaults to 0", accepts=("fcfs", "priority")),
    _same("--enable-chunked-prefill", "bool"),
    _ok("--disable-chunked-mm-input", _MM, "bool"),
    _no("--scheduler-cls", "llmcore has one scheduler"),
    _ok("--scheduler-reserve-full-isl", "blocks are allocated as prompts are computed", "bool"),
    _ok("--disable-hybrid-kv-cache-manager", "llmcore has one KV cache manager", "bool"),
    _same("--async-scheduling", "bool"),
    _same("--stream-interval"),
    _ok("--num-scheduler-steps", "the engine schedules one step at a time", accepts=("1",)),
    _ok("--preemption-mode", "preempted requests are recomputed", accepts=("recompute",)),
    # CompilationConfig, KernelConfig
    _ok("--cudagraph-capture-sizes", _CUDA, "values"),
    _ok("--max-cudagraph-capture-size", _CUDA),
    _ok("--ir-op-priority", _CUDA),
    _ok("--enable-flashinfer-autotune", _CUDA, "bool"),
    _ok("--moe-backend", _CUDA),
    _ok("--linear-backend", _CUDA),
    # VllmConfig
    _no("--speculative-config", _SPEC, short=("-sc",)),
    _no("--spec-method", _SPEC),
    _no("--spec-model", _SPEC),
    _no("--spec-tokens", _SPEC),
    _no("--speculative-model", _SPEC),
    _no("--num-speculative-tokens", _SPEC),
    _no("--kv-transfer-config", "llmcore has no disaggregated prefill (KV transfer)"),
    _no("--kv-events-config", "llmcore publishes no KV cache events"),
    _no("--ec-transfer-config", "llmcore has no encoder cache transfer"),
    _ok("--compilation-config", _CUDA, short=("-cc",)),
    _ok("--attention-config", _CUDA, short=("-ac",)),
    _no("--reasoning-config", "reasoning budgets are not supported"),
    _ok("--kernel-config", _CUDA),
    _ok("--additional-config", "llmcore has no platform plugins"),
    _ok("--structured-outputs-config", "structured outputs always use llguidance"),
    _ok("--profiler-config", "llmcore has no profiler endpoints"),
    _ok("--optimization-level", _CUDA, short=("-O",)),
    _ok("--performance-mode", _CUDA),
    _no("--weight-transfer-config", "llmcore does not update weights while serving"),
)
# fmt: on


# ---- building the parser ------------------------------------------------------------------


class _Given(argparse.Action):
    """Records a HARMLESS or REFUSED flag's value as given (True/False for a switch)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if values is None:  # a switch: its --no- form turns it off
            values = "false" if option_string and option_string.startswith("--no-") else "true"
        setattr(namespace, self.dest, values)


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def add_vllm_flags(parser: argparse.ArgumentParser) -> None:
    """Add every HARMLESS and REFUSED vLLM flag to `parser`, hidden from --help (a
    short form the parser already has keeps its own meaning). Raises RuntimeError
    when a SAME or ALIAS flag is not already an option (the table and `flags`
    disagree: a programming error)."""
    known = _option_strings(parser)
    for flag in VLLM_FLAGS:
        if flag.disposition in (S, A):
            if flag.name not in known:
                raise RuntimeError(f"vLLM flag {flag.name} ({flag.disposition.value}) is missing")
            continue
        names = [flag.name, *flag.short]
        if flag.kind == "bool":
            names.append("--no-" + flag.name[2:])
        names = [n for n in names if n not in known]  # run-batch's -q is --quiet
        nargs: int | str = {"bool": 0, "value": None, "values": "+"}[flag.kind]  # type: ignore[assignment]
        kwargs: dict[str, object] = {"nargs": nargs} if nargs is not None else {}
        parser.add_argument(
            *names, dest=flag.dest, action=_Given, default=argparse.SUPPRESS,
            help=argparse.SUPPRESS, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip


def check_vllm_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Warn about each HARMLESS flag given, refuse (parser.error: exit 2) a REFUSED
    one or a HARMLESS one with a value it does not accept."""
    for flag in VLLM_FLAGS:
        if not hasattr(args, flag.dest):
            continue
        raw = getattr(args, flag.dest)
        value = " ".join(map(str, raw)) if isinstance(raw, list) else str(raw)
        if flag.kind == "bool" and value == "false":
            continue  # --no-X: what llmcore does anyway
        if flag.disposition is R:
            parser.error(f"{flag.name} is not supported: {flag.note}")
        shown = "" if flag.kind == "bool" else f" {value}"
        if flag.accepts and value not in flag.accepts:
            parser.error(f"{flag.name}{shown} is not supported: {flag.note}")
        log.warning("%s%s has no effect in llmcore: %s", flag.name, shown, flag.note)


# ---- the docs table -----------------------------------------------------------------------


def markdown_table(flags: Iterable[VLLMFlag] = VLLM_FLAGS) -> str:
    """docs/cli.md's table of vLLM's flags (one row per flag, in the table's order)."""
    rows = ["| vLLM flag | in llmcore | note |", "|---|---|---|"]
    for flag in flags:
        names = ", ".join(f"`{n}`" for n in (flag.name, *flag.short))
        what = flag.disposition.value
        note = flag.note
        if flag.disposition is A:
            note = f"`{flag.note.split(' ')[0]}`" + flag.note[len(flag.note.split(" ")[0]) :]
        elif flag.accepts:
            allowed = ", ".join(f"`{v}`" for v in flag.accepts)
            what = f"accepted with {allowed}; other values refused"
        rows.append(f"| {names} | {what} | {note} |")
    return "\n".join(rows) + "\n"
