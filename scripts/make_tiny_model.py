"""Write a tiny FLUX pipeline with random weights, fully offline, in diffusers format.

    python scripts/make_tiny_model.py DIR [--variant FLUX.1-dev|FLUX.1-schnell|all] [--seed N]

It has the real FLUX *shape* (a FluxTransformer2DModel, a VAE with the real x8 scale and 16 latent
channels, CLIP and T5 encoders, their tokenizers built in memory) at a tiny size, so every code path
of the runner (loading, tiers, LoRA, previews, PNG writing) runs in seconds on a CPU. It is NOT a
quality model: its images are coloured noise. Same seed -> same weights.

DIR is a workspace root (``Library/AI_Models/flux/<variant>`` is created inside it) unless
``--exact`` is given, in which case DIR itself receives the pipeline (one variant only).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import FluxPipeline

VARIANTS = ("FLUX.1-schnell", "FLUX.1-dev")
MODELS_SUBDIR = Path("Library") / "AI_Models" / "flux"
NOTE = "tiny random-weight FLUX pipeline for tests and demos: NOT a quality model (images: noise)"

# Transformer sizes: head dim 16 split over the three rope axes, text width = T5 width.
TEXT_DIM = 32
HEAD_DIM = 16
HEADS = 2
AXES_DIMS_ROPE = (4, 6, 6)


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (the GPT-2 scheme)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _clip_tokenizer() -> Any:
    """A byte-level BPE CLIP tokenizer built in memory: every byte is a token, no merges."""
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab: dict[str, int] = {}
    for piece in chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(piece, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer() -> Any:
    """A Unigram T5 tokenizer built in memory (no sentencepiece training): characters as pieces."""
    from transformers import T5Tokenizer

    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()/&"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in alphabet] + [("\u2581" + c, -1.5) for c in alphabet]
    return T5Tokenizer(vocab=pieces, extra_ids=8, model_max_length=512)


def flux_scheduler(dev: bool) -> Any:
    """The real checkpoints' scheduler: FLUX.1-dev shifts by resolution, schnell does not."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if dev:
        return FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )
    return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)


def build_tiny_pipeline(variant: str, seed: int = 0) -> FluxPipeline:
    """Build a tiny FLUX pipeline in memory, in eval mode; dev has guidance_embeds, schnell not."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    dev = variant == "FLUX.1-dev"
    tokenizer, tokenizer_2 = _clip_tokenizer(), _t5_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    bos = tokenizer.convert_tokens_to_ids("<|startoftext|>")

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM,
        guidance_embeds=dev,
        axes_dims_rope=AXES_DIMS_ROPE,
    )
    torch.manual_seed(seed + 1)
    # Four blocks keep the real x8 downscale (2 ** (4 - 1)) and the multiple-of-16 size rule.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_DIM,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=TEXT_DIM,
            eos_token_id=eos,
            bos_token_id=bos,
            pad_token_id=eos,
            hidden_act="gelu",
        )
    )
    torch.manual_seed(seed + 3)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,  # dropout would make the same seed give different images
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
        )
    )
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.eval()  # modules built from a config start in training mode
    return FluxPipeline(
        scheduler=flux_scheduler(dev),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def write_tiny_model(target: Path, variant: str, seed: int = 0) -> Path:
    """Save one tiny variant into ``target`` (created) in diffusers format; returns ``target``."""
    pipe = build_tiny_pipeline(variant, seed=seed)
    target.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(target))
    (target / "README.md").write_text(f"# {variant} (tiny)\n\n{NOTE}.\n", encoding="utf-8")
    return target


def write_tiny_workspace(root: Path, variants: tuple[str, ...] = VARIANTS, seed: int = 0) -> Path:
    """Write each variant at ``<root>/Library/AI_Models/flux/<variant>``; returns ``root``."""
    for variant in variants:
        write_tiny_model(root / MODELS_SUBDIR / variant, variant, seed=seed)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("dir", type=Path, help="workspace root (or the target folder with --exact)")
    parser.add_argument("--variant", choices=[*VARIANTS, "all"], default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exact", action="store_true", help="write one variant into DIR itself")
    args = parser.parse_args(argv)
    variants = VARIANTS if args.variant == "all" else (args.variant,)
    if args.exact and len(variants) != 1:
        parser.error("--exact needs one --variant")
    start = time.perf_counter()
    for variant in variants:
        target = args.dir if args.exact else args.dir / MODELS_SUBDIR / variant
        write_tiny_model(target, variant, seed=args.seed)
        print(f"wrote {variant} -> {target}")
    print(f"{NOTE} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
