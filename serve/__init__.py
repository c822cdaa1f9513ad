"""``remask serve``: one HTTP model server that existing editor plugins can talk to.

It speaks the wire formats those plugins already send (llama.cpp ``/infill`` and ``/completion``, OpenAI
``/v1/completions`` and ``/v1/chat/completions``, Ollama ``/api/generate``, Mistral ``/v1/fim/completions``)
plus remask's own ``/remask/v1/edit`` (every engine operation, with SSE streaming of the denoising steps).
Modules: ``fim`` (prompt dialects and request validation), ``scheduler`` (batching, cancellation, per-client
prompt caches), ``app`` (the Starlette application), ``metrics`` (Prometheus text), ``cli`` (the command).
Nothing here is imported by ``model/`` or ``assistant/``; it builds on ``assistant.engine`` only.
"""
