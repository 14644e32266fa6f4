"""The local engine: scheduler, KV cache manager, sampler and the asyncio front."""
