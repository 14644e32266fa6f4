"""A FAKE engine core, for testing `ProcessEngine`'s transport without a model:
`python -m tests.llmcore.engine.fake_core --fd N` speaks llmcore/engine/ipc.py's
protocol. Every 10 ms while requests run ("a step"), each running completion
emits its next token: completion i of a request echoes the prompt's ids plus i
(token ids only, as the real core sends them to `ProcessEngine`: the API side
detokenizes), finishing ("length") after `max_tokens` tokens; all of a step's
outputs go in one `StepOutputs` frame, as the real core sends them.

Special requests: `stop=["REJECT"]` is refused (InvalidRequestError, param
"stop"); `stop=["DIE"]` makes the fake send `Died` and exit 1 (a step loop
failure); `prompt_logprobs` gets logprob -1.0 for each prompt token after the
first (sent once, as the real core sends them). Encode requests pool to their
prompt ids as float32. `Abort` ends a request (or, with an index, that one
completion) with an "abort" delta; `aborted` in the statistics counts completions
so ended (the real core's statistics have no such count: `num_waiting` carries it).
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys
from dataclasses import dataclass, field

import msgspec
import torch

from llmcore.engine import ipc
from llmcore.engine.core import EngineStatistics
from llmcore.engine.protocol import EngineInfo
from llmcore.outputs import CompletionOutput, Logprob, RequestOutput
from llmcore.pooling import PoolingOutput
from llmcore.sampling_params import SamplingParams

STEP_S = 0.01


@dataclass
class _Fake:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    emitted: int = 0
    sent_first: bool = False
    ended: set[int] = field(default_factory=set)  # completions aborted one by one


def _stats(running: int, generated: int, steps: int, aborted: int = 0) -> EngineStatistics:
    return EngineStatistics(running, aborted, 8, 8, 0.0, 0, 0, 0, generated, 0, steps)


class FakeCore:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.running: dict[str, _Fake] = {}
        self.pending: list[ipc.WireOutput | ipc.WirePooling] = []
        self.prompt_logprobs = ipc.PromptLogprobsSent()
        self.generated = 0
        self.steps = 0
        self.aborted = 0

    def serve(self) -> int:
        payload = ipc.recv_frame(self.sock)
        if payload is None:
            return 1
        assert isinstance(ipc.TO_CORE.decode(payload), ipc.Start)
        info = EngineInfo("fake", "", "generate", 4096, os.getpid())
        ipc.send_frame(self.sock, ipc.Ready(info, _stats(0, 0, 0)))
        while True:
            timeout = STEP_S if self.running or self.pending else None
            readable, _, _ = select.select([self.sock], [], [], timeout)
            if readable:
                payload = ipc.recv_frame(self.sock)
                if payload is None:
                    return 0  # the API process is gone
                code = self.handle(ipc.TO_CORE.decode(payload))
                if code is not None:
                    return code
                continue
            self.step()

    def handle(self, message: ipc.ToCore) -> int | None:
        match message:
            case ipc.Add(request_id, prompt, raw):
                params = msgspec.msgpack.decode(raw, type=SamplingParams)
                if "REJECT" in params.stop:
                    error = ipc.WireError("InvalidRequestError", "fake refusal", "stop")
                    ipc.send_frame(self.sock, ipc.Rejected(request_id, error))
                elif "DIE" in params.stop:
                    error = ipc.WireError("RuntimeError", "fake step failure")
                    ipc.send_frame(self.sock, ipc.Died(error))
                    return 1
                else:
                    self.running[request_id] = _Fake(request_id, prompt, params)
            case ipc.AddEncode(request_id, prompt):
                data = torch.tensor(prompt, dtype=torch.float32)
                self.pending.append(ipc.wire_pooling(PoolingOutput(request_id, prompt, data)))
            case ipc.Abort(request_id, index):
                fake = self.running.get(request_id)
                if fake is not None:
                    live = set(range(fake.params.n)) - fake.ended
                    ending = live if index is None else live & {index}
                    fake.ended |= ending
                    self.aborted += len(ending)
                    finished = fake.ended == set(range(fake.params.n))
                    if finished:
                        del self.running[request_id]
                    out = RequestOutput(request_id, fake.prompt, [], finished=finished)
                    for i in sorted(ending):
                        out.outputs.append(CompletionOutput(i, "", [], finish_reason="abort"))
                    self.pending.append(self.prompt_logprobs.wire_output(out))
            case ipc.Control(call_id, op):
                value: bool | EngineStatistics = True
                if op == "statistics":
                    value = _stats(len(self.running), self.generated, self.steps, self.aborted)
                elif op == "reset_prefix_cache":
                    value = not self.running
                ipc.send_frame(self.sock, ipc.Reply(call_id, value))
            case ipc.Shutdown():
                return 0
        return None

    def step(self) -> None:
        self.steps += 1
        outputs = self.pending
        self.pending = []
        for fake in list(self.running.values()):
            outputs.append(self.prompt_logprobs.wire_output(self._advance(fake)))
        ipc.send_frame(
            self.sock,
            ipc.StepOutputs(
                outputs, _stats(len(self.running), self.generated, self.steps, self.aborted)
            ),
        )

    def _advance(self, fake: _Fake) -> RequestOutput:
        p = fake.params
        token = fake.prompt[fake.emitted % len(fake.prompt)]
        fake.emitted += 1
        done = fake.emitted >= (p.max_tokens or 16)
        completions = [
            CompletionOutput(
                i,
                "",
                [token + i],
                finish_reason="length" if done else None,
                logprobs=None if p.logprobs is None else [Logprob(token + i, -0.5, 1)],
            )
            for i in range(p.n)
            if i not in fake.ended
        ]
        self.generated += len(completions)
        prompt_logprobs = None
        if p.prompt_logprobs is not None:
            prompt_logprobs = [None, *(Logprob(t, -1.0, 1) for t in fake.prompt[1:])]
        if done:
            del self.running[fake.request_id]
        return RequestOutput(
            fake.request_id, fake.prompt, completions, done, prompt_logprobs=prompt_logprobs
        )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args()
    sock = socket.socket(fileno=args.fd)
    try:
        return FakeCore(sock).serve()
    except (BrokenPipeError, ConnectionResetError):
        return 0
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
