"""`llm-quant package | serve | generate`: thin typer commands over triton_backend's library API."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from quant_common.cli import handle_errors, print_json
from quant_common.errors import QuantError
from triton_backend import conformance
from triton_backend.client import LLMClient
from triton_backend.options import TritonOptions
from triton_backend.repository import package_for_build
from triton_backend.server import TritonServer, check_repository, find_tritonserver


def _load_options(path: Path | None, overrides: dict[str, Any]) -> TritonOptions:
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
    build_dir: Annotated[Path, typer.Argument(help="Output folder of `llm-quant build` (holds embedded/).")],
    runtime: Annotated[str, typer.Option(help="auto | pytorch | tensorrtllm | llmapi. auto: tensorrtllm where "
                                             "--engine-dir holds an engine, else pytorch.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Repository folder [default: BUILD_DIR/triton_repo].")] = None,
    engine_dir: Annotated[Path | None, typer.Option(help="TensorRT-LLM engine (trtllm-build --output_dir).")] = None,
    hf_checkpoint_dir: Annotated[Path | None, typer.Option(help="HF unified checkpoint (for --runtime llmapi).")] = None,
    trtllm_checkpoint_dir: Annotated[Path | None, typer.Option(help="TensorRT-LLM checkpoint (recorded).")] = None,
    embedded_dir: Annotated[Path | None, typer.Option(help="[default: BUILD_DIR/embedded]")] = None,
    tokenizer_dir: Annotated[Path | None, typer.Option(help="[default: the embedded dir]")] = None,
    options: Annotated[Path | None, typer.Option("--options", help="YAML with Triton options (a preset's triton: "
                                                                 "section or the bare mapping).")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="triton_max_batch_size.")] = None,
    decoupled: Annotated[bool | None, typer.Option("--decoupled/--no-decoupled", help="Streaming needs decoupled.")] = None,
    kv_cache_free_gpu_mem_fraction: Annotated[float | None, typer.Option(help="TensorRT-LLM KV-cache fraction.")] = None,
    max_input_len: Annotated[int | None, typer.Option(help="Longest prompt in tokens [default: model limit].")] = None,
    trtllm_version: Annotated[str | None, typer.Option(
        help="TensorRT-LLM version the repository is for, when none is installed here or recorded in the engine "
             "[default: the newest backend family known, TensorRT-LLM's in-tree backend (0.20+)].")] = None,
    check: Annotated[bool, typer.Option("--check", help="Check BUILD_DIR as an existing repository against "
                                                        "--trtllm-version (default: the version it was written "
                                                        "for) and exit: one line per problem.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Write a Triton model repository for a build (or, with --check, check one).

    Examples:

      llm-quant package out/llama

      llm-quant package out/llama --runtime tensorrtllm --engine-dir out/llama/engine --max-batch-size 16

      llm-quant package out/llama --runtime llmapi --hf-checkpoint-dir out/llama/hf_checkpoint

      llm-quant package --check out/llama/triton_repo --trtllm-version 0.19.0

    BUILD_DIR/engine, BUILD_DIR/hf_checkpoint and BUILD_DIR/trtllm_checkpoint are used when present.
    """
    if check:
        _check(build_dir, trtllm_version)
        return
    opts = _load_options(options, {"max_batch_size": max_batch_size, "decoupled": decoupled,
                                   "kv_cache_free_gpu_mem_fraction": kv_cache_free_gpu_mem_fraction,
                                   "max_input_len": max_input_len})
    # The folders `llm-quant build` writes, where present and not given explicitly.
    if engine_dir is None and (build_dir / "engine" / "config.json").is_file():
        engine_dir = build_dir / "engine"
    if hf_checkpoint_dir is None and (build_dir / "hf_checkpoint" / "config.json").is_file():
        hf_checkpoint_dir = build_dir / "hf_checkpoint"
    if trtllm_checkpoint_dir is None and (build_dir / "trtllm_checkpoint" / "config.json").is_file():
        trtllm_checkpoint_dir = build_dir / "trtllm_checkpoint"
    result = package_for_build(build_dir, options=opts, runtime=runtime, embedded_dir=embedded_dir,  # type: ignore[arg-type]
                               tokenizer_dir=tokenizer_dir, engine_dir=engine_dir, out=out,
                               trtllm_checkpoint_dir=trtllm_checkpoint_dir, hf_checkpoint_dir=hf_checkpoint_dir,
                               trtllm_version=trtllm_version)
    if as_json:
        print_json(result)
        return
    typer.echo(f"wrote {result.path} (runtime {result.runtime}: {', '.join(result.models)}; "
               f"max input {result.max_input_len} tokens, max sequence {result.max_seq_len})")
    if result.target is not None:
        typer.echo(f"for TensorRT-LLM backend {result.target.family} ({result.target.reason})")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"serve it with: llm-quant serve {result.path}")


def _check(repo: Path, trtllm_version: str | None) -> None:
    fam = conformance.target_family(repo, trtllm_version)
    problems = conformance.check_repository(repo, fam)
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        typer.echo(f"{repo}: {len(problems)} problem(s) for TensorRT-LLM backend {fam.name}; repackage with "
                   f"llm-quant package --trtllm-version {fam.trtllm_min}", err=True)
        raise typer.Exit(1)
    typer.echo(f"OK for TensorRT-LLM backend {fam.name} ({fam.where})")


def serve(
    repo: Annotated[Path, typer.Argument(help="Triton model repository (e.g. out/llama/triton_repo).")],
    http_port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Metrics port.")] = 8002,
    host: Annotated[str, typer.Option(help="Address to bind (all three endpoints).")] = "127.0.0.1",
    log_file: Annotated[Path | None, typer.Option(help="Server log [default: REPO/../tritonserver.log].")] = None,
    tritonserver: Annotated[Path | None, typer.Option(help="tritonserver binary [default: PATH, else nvidia-pytriton].")] = None,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for the models to load.")] = 600.0,
    orchestrator: Annotated[bool, typer.Option("--orchestrator", help="Multi-GPU engine: one server whose "
                                               "TensorRT-LLM backend spawns the ranks (instead of mpirun).")] = False,
    print_command: Annotated[bool, typer.Option("--print-command", help="Print the exact command line and exit.")
                             ] = False,
) -> None:
    """Start Triton Inference Server on a model repository; Ctrl-C stops it.

    Examples:

      llm-quant serve out/llama/triton_repo

      llm-quant serve out/llama/triton_repo --http-port 9000 --grpc-port 9001 --metrics-port 9002

      llm-quant serve out/llama/triton_repo --print-command

    An engine built for tp x pp > 1 GPUs (its config.json) is served as upstream's launch_triton_server.py does:
    mpirun with one tritonserver per rank, or with --orchestrator one server that spawns them.

    Then: curl -X POST localhost:8000/v2/models/ensemble/generate -d '{"text_input": "Hi", "max_tokens": 16}'
    """
    server = TritonServer(repo, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, host=host,
                          log_file=log_file, binary=tritonserver, ready_timeout_s=ready_timeout,
                          orchestrator=orchestrator)
    if print_command:
        check_repository(repo)
        typer.echo(server.launch_plan(find_tritonserver(tritonserver)).shell())
        return
    run_in_foreground(server, f'llm-quant generate "Hello" --url {host}:{http_port}')


def run_in_foreground(server: TritonServer, hint: str) -> None:
    """Start ``server``, print where it listens and ``hint``, serve until Ctrl-C/SIGTERM, then stop it cleanly.

    ``llm-quant serve`` and ``vision-quant serve`` both run this.
    """

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        log = server.log_file or server.repo.resolve().parent / "tritonserver.log"
        typer.echo(f"starting Triton on {server.repo} (log: {log})", err=True)
        server.start()
        typer.echo(f"ready: HTTP http://{server.http_url}  gRPC {server.grpc_url}  metrics "
                   f"http://{server.host}:{server.metrics_port}/metrics", err=True)
        typer.echo(f"try: {hint}", err=True)
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
    prompt: Annotated[str, typer.Argument(help="Text to complete.")],
    url: Annotated[str | None, typer.Option(help="host:port [default: 127.0.0.1:8000 for http, :8001 for grpc].")] = None,
    model: Annotated[str, typer.Option(help="ensemble | tensorrt_llm_bls | tensorrt_llm (llmapi runtime).")] = "ensemble",
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 64,
    stream: Annotated[bool, typer.Option("--stream", help="Print tokens as they arrive.")] = False,
    protocol: Annotated[str, typer.Option(help="http (generate endpoint) | grpc (streaming API).")] = "http",
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (with --top-k/--top-p).")] = None,
    top_k: Annotated[int | None, typer.Option(help="Sample from the k best tokens (greedy when unset or 1).")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling threshold.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed for sampling.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print text, tokens and latency as JSON.")] = False,
) -> None:
    """Ask the served model to complete a prompt (greedy by default).

    Examples:

      llm-quant generate "What is INT8 quantization?" --max-tokens 32

      llm-quant generate "Once upon a time" --stream --protocol grpc

      llm-quant generate "Hello" --url 127.0.0.1:9000 --model tensorrt_llm_bls --json
    """
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
