"""Cheap live previews: flow-matching x0 estimate -> a 16->3 linear map -> a small PNG.

Why not a VAE decode per preview: at 1024^2 it costs about as much as a denoising step. The
linear map is fitted here, by least squares, against the pipeline's *own* VAE (so it fits the
tiny test VAE and the real FLUX VAE alike; no third-party factors are copied): latents of a few
synthetic images (flat colours, smooth colour fields) and Gaussian latents are decoded once, and
each latent pixel is regressed onto the mean colour of the 8x8 block the decoder makes of it.

x0 estimate: FluxPipeline steps with Euler on a flow-matching ODE, x_{i+1} = x_i + (s_{i+1} - s_i) v
and x0 = x_i - s_i v, so two consecutive latents and the scheduler's sigmas give x0 exactly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import get_module_execution_device
from PIL import Image

_FIT_SIZE = 64  # pixels of each synthetic fitting image (8x8 latents: plenty for 17 unknowns)
_FIT_FIELDS = 10  # smooth random colour fields besides the flat colours


def _fit_images(generator: torch.Generator) -> torch.Tensor:
    flat = torch.tensor(
        [[-1, -1, -1], [1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1], [0, 0, 0]],
        dtype=torch.float32,
    )
    flat = flat[:, :, None, None].expand(-1, -1, _FIT_SIZE, _FIT_SIZE)
    coarse = torch.rand((_FIT_FIELDS, 3, 4, 4), generator=generator) * 2 - 1
    fields = F.interpolate(coarse, size=(_FIT_SIZE, _FIT_SIZE), mode="bilinear", align_corners=True)
    return torch.cat([flat, fields])


@torch.no_grad()
def fit_latent_to_rgb(pipe: Any) -> torch.Tensor:
    """A (17, 3) float32 matrix: [16 latent channels, 1] -> RGB in 0..1, for this pipeline's VAE.

    Latents are in the transformer's space, i.e. (vae latent - shift_factor) * scaling_factor.
    The fit regresses what the *decoder* makes of latents (encoded synthetic images, plus
    Gaussian latents like the noisy early x0 estimates) onto the mean colour of each 8x8 block.
    """
    vae = pipe.vae
    generator = torch.Generator("cpu").manual_seed(0)
    images = _fit_images(generator)
    device = get_module_execution_device(vae)
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    encoded = vae.encode(images.to(device=device, dtype=vae.dtype)).latent_dist.mode().float().cpu()
    noise = torch.randn((len(images) // 2, *encoded.shape[1:]), generator=generator)
    latents = torch.cat([(encoded - shift) * scale, noise])  # transformer space
    decoded = vae.decode((latents / scale + shift).to(device=device, dtype=vae.dtype)).sample
    block = decoded.shape[-1] // latents.shape[-1]  # 8 for FLUX
    targets = ((F.avg_pool2d(decoded.float().cpu(), block) + 1) / 2).clamp(0, 1)
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    y = targets.permute(0, 2, 3, 1).reshape(-1, 3).double()
    return torch.linalg.lstsq(x, y).solution.float()


class PreviewRenderer:
    """Turns the packed latents the step callback sees into small RGB previews."""

    def __init__(self, pipe: Any, matrix: torch.Tensor, width: int, height: int) -> None:
        self.pipe = pipe
        self.matrix = matrix
        self.width = width
        self.height = height
        self.previous: torch.Tensor | None = None

    def start(self, initial_latents: torch.Tensor) -> None:
        """Remember the starting noise: the first x0 estimate needs the latent before step 0."""
        self.previous = initial_latents.detach().float().clone()

    def step(self, index: int, latents: torch.Tensor) -> torch.Tensor:
        """Record the latents after step ``index``; returns the x0 estimate (packed, float32).

        Stays on the latents' device: no GPU->CPU copy (and sync) unless a preview is drawn."""
        current = latents.detach().float().clone()
        sigmas = self.pipe.scheduler.sigmas
        s_i, s_next = float(sigmas[index]), float(sigmas[index + 1])
        previous = self.previous if self.previous is not None else current
        self.previous = current
        if s_next == s_i:
            return current
        velocity = (current - previous) / (s_next - s_i)
        return current - s_next * velocity

    def image(self, x0_packed: torch.Tensor) -> Image.Image:
        """Linear-map an x0 estimate to RGB, upscaled to a quarter of the output size."""
        pipe = self.pipe
        x0 = x0_packed.cpu()
        lat = pipe._unpack_latents(x0, self.height, self.width, pipe.vae_scale_factor)
        rgb = torch.einsum("chw,cd->dhw", lat[0], self.matrix[:-1]) + self.matrix[-1][:, None, None]
        rgb = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        size = (max(self.width // 4, 1), max(self.height // 4, 1))
        return Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)
