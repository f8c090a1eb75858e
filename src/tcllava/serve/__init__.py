"""tcllava.serve: ``tcllava chat`` (one answer in the terminal) and ``tcllava serve`` (the page and an
OpenAI-compatible API in one local server).

Modules of the server, each importing only those before it: ``schema`` (the request, its errors, the
response bodies; pydantic only), ``media`` (data: and file:// videos, read with the decoder's timeout),
``engine`` (the batching worker, one thread per model), ``service`` (limits, and a chat turned into a
prepared request; shared by the API and the page), ``panels`` and ``examples`` (the page's attention
figures and synthetic example videos), ``ui`` (the Gradio page), ``app`` (the FastAPI app), ``server``
(uvicorn on a bound socket), ``serve_cli``. FastAPI, uvicorn and Gradio are the ``serve`` extra, imported
only by ``app``, ``ui``, ``server`` and inside the command.
"""
