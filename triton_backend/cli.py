"""`llm-quant package | serve | generate`: thin typer commands over triton_backend's library API."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import typer

from quant_common.cli import handle_errors, print_json
from quant_common.errors import QuantError


def _load_options(path: Path | None, overrides: dict[str, Any]) -> Any:
    import yaml

    from triton_backend.options import TritonOptions

    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise QuantError(f"cannot read Triton options {path}: {exc}", "pass a YAML file") from exc
        data = dict(loaded.get("triton", loaded)) if isinstance(loaded, dict) else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TritonOptions.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError -> one line
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise QuantError(f"invalid Triton options: {' '.join(lines[1:3])}", "fix the option") from exc


def package(
    build_dir: Path = typer.Argument(..., help="Output folder of `llm-quant build` (holds embedded/)."),
    runtime: str = typer.Option("auto", help="auto | pytorch | tensorrtllm | llmapi. auto: tensorrtllm where "
                                             "--engine-dir holds an engine, else pytorch."),
    out: Path | None = typer.Option(None, help="Repository folder [default: BUILD_DIR/triton_repo]."),
    engine_dir: Path | None = typer.Option(None, help="TensorRT-LLM engine (trtllm-build --output_dir)."),
    hf_checkpoint_dir: Path | None = typer.Option(None, help="HF unified checkpoint (for --runtime llmapi)."),
    trtllm_checkpoint_dir: Path | None = typer.Option(None, help="TensorRT-LLM checkpoint (recorded)."),
    embedded_dir: Path | None = typer.Option(None, help="[default: BUILD_DIR/embedded]"),
    tokenizer_dir: Path | None = typer.Option(None, help="[default: the embedded dir]"),
    options: Path | None = typer.Option(None, "--options", help="YAML with Triton options (a preset's triton: "
                                                                 "section or the bare mapping)."),
    max_batch_size: int | None = typer.Option(None, help="triton_max_batch_size."),
    decoupled: bool | None = typer.Option(None, "--decoupled/--no-decoupled", help="Streaming needs decoupled."),
    kv_cache_free_gpu_mem_fraction: float | None = typer.Option(None, help="TensorRT-LLM KV-cache fraction."),
    max_input_len: int | None = typer.Option(None, help="Longest prompt in tokens [default: model limit]."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Write a Triton model repository for a build.

    Examples:

      llm-quant package out/llama

      llm-quant package out/llama --runtime tensorrtllm --engine-dir out/llama/engine --max-batch-size 16

      llm-quant package out/llama --runtime llmapi --hf-checkpoint-dir out/llama/hf_checkpoint
    """
    from triton_backend.repository import package_for_build

    opts = _load_options(options, {"max_batch_size": max_batch_size, "decoupled": decoupled,
                                   "kv_cache_free_gpu_mem_fraction": kv_cache_free_gpu_mem_fraction,
                                   "max_input_len": max_input_len})
    result = package_for_build(build_dir, options=opts, runtime=runtime, embedded_dir=embedded_dir,  # type: ignore[arg-type]
                               tokenizer_dir=tokenizer_dir, engine_dir=engine_dir, out=out,
                               trtllm_checkpoint_dir=trtllm_checkpoint_dir, hf_checkpoint_dir=hf_checkpoint_dir)
    if as_json:
        print_json(result)
        return
    typer.echo(f"wrote {result.path} (runtime {result.runtime}: {', '.join(result.models)}; "
               f"max input {result.max_input_len} tokens, max sequence {result.max_seq_len})")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"serve it with: llm-quant serve {result.path}")


def serve(
    repo: Path = typer.Argument(..., help="Triton model repository (e.g. out/llama/triton_repo)."),
    http_port: int = typer.Option(8000, help="HTTP port."),
    grpc_port: int = typer.Option(8001, help="gRPC port."),
    metrics_port: int = typer.Option(8002, help="Metrics port."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (all three endpoints)."),
    log_file: Path | None = typer.Option(None, help="Server log [default: REPO/../tritonserver.log]."),
    tritonserver: Path | None = typer.Option(None, help="tritonserver binary [default: PATH, else nvidia-pytriton]."),
    ready_timeout: float = typer.Option(600.0, help="Seconds to wait for the models to load."),
) -> None:
    """Start Triton Inference Server on a model repository; Ctrl-C stops it.

    Examples:

      llm-quant serve out/llama/triton_repo

      llm-quant serve out/llama/triton_repo --http-port 9000 --grpc-port 9001 --metrics-port 9002

    Then: curl -X POST localhost:8000/v2/models/ensemble/generate -d '{"text_input": "Hi", "max_tokens": 16}'
    """
    from triton_backend.server import TritonServer

    server = TritonServer(repo, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, host=host,
                          log_file=log_file, binary=tritonserver, ready_timeout_s=ready_timeout)

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        typer.echo(f"starting Triton on {repo} (log: {server.log_file or repo.resolve().parent / 'tritonserver.log'})",
                   err=True)
        server.start()
        typer.echo(f"ready: HTTP http://{server.http_url}  gRPC {server.grpc_url}  metrics "
                   f"http://{host}:{metrics_port}/metrics", err=True)
        typer.echo(f'try: llm-quant generate "Hello" --url {server.http_url}', err=True)
        code = server.wait()
        raise QuantError(f"tritonserver exited unexpectedly with code {code}", f"see {server.log_file}")
    except KeyboardInterrupt:
        typer.echo("stopping Triton...", err=True)
        server.stop()
        typer.echo("stopped", err=True)
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def generate(
    prompt: str = typer.Argument(..., help="Text to complete."),
    url: str | None = typer.Option(None, help="host:port [default: 127.0.0.1:8000 for http, :8001 for grpc]."),
    model: str = typer.Option("ensemble", help="ensemble | tensorrt_llm_bls | tensorrt_llm (llmapi runtime)."),
    max_tokens: int = typer.Option(64, help="Tokens to generate."),
    stream: bool = typer.Option(False, "--stream", help="Print tokens as they arrive."),
    protocol: str = typer.Option("http", help="http (generate endpoint) | grpc (streaming API)."),
    temperature: float | None = typer.Option(None, help="Sampling temperature (with --top-k/--top-p)."),
    top_k: int | None = typer.Option(None, help="Sample from the k best tokens (greedy when unset or 1)."),
    top_p: float | None = typer.Option(None, help="Nucleus sampling threshold."),
    seed: int | None = typer.Option(None, help="Random seed for sampling."),
    as_json: bool = typer.Option(False, "--json", help="Print text, tokens and latency as JSON."),
) -> None:
    """Ask the served model to complete a prompt (greedy by default).

    Examples:

      llm-quant generate "What is INT8 quantization?" --max-tokens 32

      llm-quant generate "Once upon a time" --stream --protocol grpc

      llm-quant generate "Hello" --url 127.0.0.1:9000 --model tensorrt_llm_bls --json
    """
    from triton_backend.client import LLMClient

    if protocol not in ("http", "grpc"):
        raise QuantError(f"unknown protocol {protocol!r}", "use --protocol http or --protocol grpc")
    address = url or ("127.0.0.1:8000" if protocol == "http" else "127.0.0.1:8001")
    client = LLMClient(address, protocol=protocol, model=model)  # type: ignore[arg-type]
    options = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}
    if stream:
        pieces = []
        for piece in client.stream(prompt, max_tokens=max_tokens, **options):
            pieces.append(piece)
            if not as_json:
                sys.stdout.write(piece)
                sys.stdout.flush()
        if as_json:
            print_json({"text": "".join(pieces), "pieces": pieces})
        else:
            sys.stdout.write("\n")
        return
    result = client.generate(prompt, max_tokens=max_tokens, **options)
    if as_json:
        print_json({"text": result.text, "tokens": result.tokens, "latency_s": round(result.latency_s, 4)})
    else:
        typer.echo(result.text)


def register(app: typer.Typer) -> None:
    app.command("package")(handle_errors(package))
    app.command("serve")(handle_errors(serve))
    app.command("generate")(handle_errors(generate))
