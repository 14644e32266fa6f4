"""The local engine: input processor, scheduler and KV cache manager, sampler, output
processor, and the asyncio front (see docs/design.md, "The engine")."""
