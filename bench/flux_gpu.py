"""FLUX tier benchmark: each quality tier vs plain diffusers bf16, same weights, same run.

    python bench/flux_gpu.py                 # full-size FLUX.1-dev/schnell, random weights, GPU
    python bench/flux_gpu.py --tiny          # the same code on the CPU with tiny configs (tests)
    python bench/flux_gpu.py --json out.json --runs 5 --cases baseline,standard

No download: the full-size architectures are built with random weights directly on the GPU
(``torch.device("cuda")`` + bf16 default dtype: seconds, not minutes). Random weights give the
real compute and memory cost, not real images. Tokenizers are the tiny in-memory ones (token
ids stay inside the real vocabularies; sequence lengths are padded to the real maxima).

Each tier goes through the runner's own code (``runners.flux.generation.generate`` on a
pipeline handed over with ``install_pipeline``, so ``optimize.apply_tier`` decides fp8, offload,
compile, ...); the baseline is a plain ``FluxPipeline.__call__`` with everything resident in
bf16. Per case: s/image (median of ``--runs`` after one warm-up), s/step (image time / steps),
cold start (build + tier settings + first image, compile included), peak allocated and
reserved VRAM over the timed runs, and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a file: make runners/ and scripts/ importable

CASES = ("baseline", "low", "standard", "high")
CASE_VARIANT = {"baseline": "FLUX.1-dev", "low": "FLUX.1-schnell",
                "standard": "FLUX.1-dev", "high": "FLUX.1-dev"}
GIB = 2**30


@dataclass
class CaseResult:
    case: str
    variant: str
    steps: int
    size: int
    s_per_image: float
    s_per_step: float
    cold_start_s: float
    build_s: float
    peak_allocated_gib: float | None
    peak_reserved_gib: float | None
    runs: list[float]
    settings: dict[str, Any]
    ratio_image: float | None = None  # s/image divided by the baseline's
    ratio_step: float | None = None
    ratio_vram: float | None = None


def build_full_pipeline(variant: str, device: str) -> Any:
    """Full-size FLUX (12B transformer, T5-XXL, CLIP-L, VAE) with random weights on ``device``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from scripts.make_tiny_model import _clip_tokenizer, _t5_tokenizer, flux_scheduler

    dev = variant == "FLUX.1-dev"
    tokenizer, tokenizer_2 = _clip_tokenizer(), _t5_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    # Building in place on the GPU in bf16 takes seconds; avoid meta + to_empty (garbage buffers).
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(guidance_embeds=dev)  # the defaults are FLUX.1
            vae = AutoencoderKL(
                in_channels=3, out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                latent_channels=16, norm_num_groups=32, sample_size=1024,
                scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False,
            )
            text_encoder = CLIPTextModel(CLIPTextConfig(
                vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                hidden_act="quick_gelu", eos_token_id=eos, bos_token_id=eos - 1, pad_token_id=eos,
            ))
            text_encoder_2 = T5EncoderModel(T5Config(
                vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                num_heads=64, relative_attention_num_buckets=32, dropout_rate=0.0,
                feed_forward_proj="gated-gelu", is_encoder_decoder=False,
            ))
    finally:
        torch.set_default_dtype(previous)
    scheduler = flux_scheduler(dev)
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.eval()
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                        tokenizer_2=tokenizer_2, transformer=transformer)


def build_tiny(variant: str, dtype_name: str = "bfloat16") -> Any:
    import torch

    from scripts.make_tiny_model import build_tiny_pipeline

    pipe = build_tiny_pipeline(variant, seed=0)
    return pipe.to(dtype=getattr(torch, dtype_name))  # as the runner loads it (dtype=bfloat16)


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def _free(cuda: bool) -> None:
    from runners.flux.generation import clear_cache

    clear_cache()
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def run_case(case: str, args: argparse.Namespace, workspace: Path, cuda: bool) -> CaseResult:
    import torch

    from runners.flux.generation import FluxRequest, generate, install_pipeline
    from runners.flux.tiers import get_tier

    variant = CASE_VARIANT[case]
    dev_steps = args.steps or (4 if args.tiny else 28)
    steps = dev_steps if case != "low" else min(dev_steps, get_tier("low").max_steps)
    _free(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    # Held in a dict, not a local, so it can be dropped once the cache (tiers) has it.
    # --tiny baseline in float32: bf16 convolutions on a CPU are ~50x slower (the VAE alone would
    # dominate); --tiny checks the code path, its timings say nothing about GPUs.
    dtype = "float32" if args.tiny and case == "baseline" else "bfloat16"
    pipe = build_tiny(variant, dtype) if args.tiny else build_full_pipeline(variant, "cuda")
    held = {"pipe": pipe}
    del pipe
    _sync(cuda)
    build_s = time.perf_counter() - start

    if case == "baseline":
        held["pipe"].set_progress_bar_config(disable=True)
        held["pipe"].to("cuda" if cuda else "cpu")
        settings: dict[str, Any] = {"plain diffusers": f"{dtype}, everything resident, no compile"}

        def render(i: int) -> None:
            held["pipe"](prompt=f"{args.prompt} {i}", height=args.size, width=args.size,
                 num_inference_steps=steps, guidance_scale=3.5, max_sequence_length=512,
                 generator=torch.Generator("cpu").manual_seed(i))
    else:
        model_dir = workspace / "Library" / "AI_Models" / "bench" / case
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "model_index.json").write_text("{}")  # generate() checks the folder exists
        settings = install_pipeline(case, model_dir, held.pop("pipe"), workspace=workspace)

        def render(i: int) -> None:
            generate(FluxRequest(
                prompt=f"{args.prompt} {i}", output_path=f"bench/{case}_{i}.png",
                workspace=workspace, quality=case, model_dir=model_dir, seed=i, steps=steps,
                width=args.size, height=args.size, preview_every=None if args.preview else 0,
            ))

    render(0)  # warm-up: kernels, compile, preview fit
    _sync(cuda)
    cold = time.perf_counter() - start
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(1, args.runs + 1):
        t0 = time.perf_counter()
        render(i)
        _sync(cuda)
        times.append(time.perf_counter() - t0)
    peak_alloc = torch.cuda.max_memory_allocated() / GIB if cuda else None
    peak_reserved = torch.cuda.max_memory_reserved() / GIB if cuda else None
    held.clear()
    _free(cuda)
    median = statistics.median(times)
    return CaseResult(case, variant, steps, args.size, median, median / steps, cold, build_s,
                      peak_alloc, peak_reserved, times, settings)


def add_ratios(results: list[CaseResult]) -> None:
    base = next((r for r in results if r.case == "baseline"), None)
    if base is None:
        return
    for r in results:
        r.ratio_image = r.s_per_image / base.s_per_image
        r.ratio_step = r.s_per_step / base.s_per_step
        if r.peak_allocated_gib and base.peak_allocated_gib:
            r.ratio_vram = r.peak_allocated_gib / base.peak_allocated_gib


def table(results: list[CaseResult]) -> str:
    def num(v: float | None, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    head = (f"{'case':<9} {'model':<15} {'steps':>5} {'s/image':>8} {'s/step':>8} "
            f"{'cold s':>7} {'alloc GiB':>9} {'resv GiB':>9} {'x base img':>10} "
            f"{'x base step':>11} {'x base VRAM':>11}")
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(
            f"{r.case:<9} {r.variant:<15} {r.steps:>5} {r.s_per_image:>8.3f} "
            f"{r.s_per_step:>8.4f} {r.cold_start_s:>7.1f} {num(r.peak_allocated_gib, '.1f'):>9} "
            f"{num(r.peak_reserved_gib, '.1f'):>9} {num(r.ratio_image, '.2f'):>10} "
            f"{num(r.ratio_step, '.2f'):>11} {num(r.ratio_vram, '.2f'):>11}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU")
    parser.add_argument("--cases", default=",".join(CASES), help="comma list of " + ",".join(CASES))
    parser.add_argument("--runs", type=int, default=3, help="timed images per case (>= 3)")
    parser.add_argument("--size", type=int, default=None, help="pixels (default 1024; tiny 256)")
    parser.add_argument("--steps", type=int, default=None, help="dev steps (default 28; tiny 4)")
    parser.add_argument("--prompt", default="a lone astronaut on a red desert planet")
    parser.add_argument("--no-preview", dest="preview", action="store_false",
                        help="tiers without live previews (they are on by default, as for users)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; --tiny: 1, tiny ops only lose "
                             "time in thread barriers)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    args.size = args.size or (256 if args.tiny else 1024)
    if args.runs < 3:
        parser.error("--runs must be >= 3 (the median of at least three)")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")

    # Library chatter (dtype notes, torchvision hints) would drown the table.
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    threads = args.threads or (1 if args.tiny else None)
    if threads:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available() and not args.tiny
    if not args.tiny and not cuda:
        print("ERROR: no CUDA GPU: run with --tiny for the CPU version", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name() if cuda else "cpu (tiny configs)"
    print(f"FLUX tier bench on {device}, {args.size}x{args.size}, {args.runs} timed runs per case",
          flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="flux-bench-") as tmp:
        for case in cases:
            result = run_case(case, args, Path(tmp), cuda)
            print(f"  {case}: {result.s_per_image:.3f} s/image, cold {result.cold_start_s:.1f} s",
                  flush=True)
            results.append(result)
    add_ratios(results)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"device": device, "results": [asdict(r) for r in results]},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
