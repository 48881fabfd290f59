"""``sage-agent serve``: vLLM's OpenAI-compatible server for a model, LoRA enabled, in the
foreground until Ctrl-C. ``run``, ``eval`` and ``demo`` answer through it with
``--engine URL``; the adapters they keep are registered with it as they are kept."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sage_agent.embedded import EMBEDDED_CHAT_MODEL


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve the model with vLLM, adapters loaded at run time")
    serve.add_argument("--model", default=None, help="hub id, local folder or .gguf file")
    serve.add_argument("--name", default=None, help="the model's name on the server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--dtype",
        choices=("auto", "bfloat16", "float32"),
        default="auto",
        help="auto: bfloat16 where the CPU computes in it, else float32",
    )
    serve.add_argument(
        "--vllm-python",
        default=None,
        help="the Python that has vLLM installed (default $SAGE_VLLM_PYTHON, else this one)",
    )
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    from sage_agent.serving import ServerSpec, VLLMServer, served_weights

    model = args.model or EMBEDDED_CHAT_MODEL
    weights = served_weights(model)
    name = args.name or Path(model).name.removesuffix(".gguf")
    spec = ServerSpec(
        weights, name, host=args.host, port=args.port, dtype=args.dtype, python=args.vllm_python
    )
    print(f"sage-agent serve: starting vLLM for {name} ({weights}) at {spec.url}", flush=True)
    server = VLLMServer(spec, log=sys.stderr)
    try:
        server.start()
        print(f"serving {name} at {spec.url}; answer through it with --engine {spec.url}")
        print("Ctrl-C stops it", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        print("\nsage-agent serve: stopped", file=sys.stderr)
        return 0
    finally:
        server.stop()
