"""The FLUX runner in process (the warm worker's path): cache, seeds, progress, previews, CFG."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runners.flux import generation
from runners.flux.contract import BadInput, Cancelled, FluxError
from runners.flux.generation import FluxRequest, generate, load_count
from runners.flux.metadata import read_metadata

SIZE = 256


def request(workspace: Path, name: str, **kw: object) -> FluxRequest:
    values: dict = {"prompt": "a red fox in snow", "seed": 11, "steps": 2, "width": SIZE,
                    "height": SIZE, "quality": "standard", "workspace": workspace,
                    "output_path": f"Projects/InProcess/03_Renders/{name}.png"}
    values.update(kw)
    return FluxRequest(**values)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64)


def test_a_second_take_on_the_same_variant_does_not_reload_the_pipeline(
    tiny_model_dir: Path,
) -> None:
    # A private copy of the model: its cache key is new, whatever other tests loaded before.
    model = tiny_model_dir / "Library" / "AI_Models" / "flux-copy" / "FLUX.1-dev"
    shutil.copytree(tiny_model_dir / "Library/AI_Models/flux/FLUX.1-dev", model)
    before = load_count()
    first = generate(request(tiny_model_dir, "load1", model_dir=model))
    assert first.loaded_pipeline and load_count() == before + 1
    second = generate(request(tiny_model_dir, "load2", model_dir=model, seed=12))
    assert not second.loaded_pipeline and load_count() == before + 1
    assert second.timings["load"] < first.timings["load"]

    # Two takes at once on the cached pipeline: serialised by its lock, both complete.
    errors: list[BaseException] = []

    def take(n: int) -> None:
        try:
            generate(request(tiny_model_dir, f"thread{n}", model_dir=model, seed=20 + n))
        except BaseException as exc:  # noqa: BLE001  (reported by the assertion below)
            errors.append(exc)

    threads = [threading.Thread(target=take, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and load_count() == before + 1
    renders = tiny_model_dir / "Projects/InProcess/03_Renders"
    assert (renders / "thread1.png").is_file() and (renders / "thread2.png").is_file()


def test_without_a_seed_a_random_one_is_used_reported_and_recorded(tiny_model_dir: Path) -> None:
    result = generate(request(tiny_model_dir, "random_seed", seed=None))
    assert 0 <= result.seed < 2**32
    assert read_metadata(result.output_path)["seed"] == result.seed
    # ... and the recorded seed re-creates the take exactly.
    again = generate(request(tiny_model_dir, "random_seed_again", seed=result.seed))
    assert again.output_path.read_bytes() == result.output_path.read_bytes()


def test_progress_rises_to_100_with_about_four_previews(tiny_model_dir: Path) -> None:
    events: list[tuple[int, str, str | None]] = []
    result = generate(request(tiny_model_dir, "progress", steps=8),
                      lambda p, s, preview: events.append((p, s, preview)))
    percents = [p for p, _, _ in events]
    assert percents == sorted(percents) and percents[-1] == 100
    previews = [(s, p) for _, s, p in events if p]
    assert [s for s, _ in previews] == [f"Denoising step {n}/8" for n in (2, 4, 6, 8)]
    preview = Path(previews[-1][1])
    assert preview == result.output_path.with_name("progress.preview.png") == result.preview_path
    with Image.open(preview) as img:
        assert img.size == (SIZE // 4, SIZE // 4)
    # The last preview is the linear-map approximation of the final image: it must resemble it.
    final = np.asarray(Image.open(result.output_path).resize((SIZE // 4,) * 2, Image.BOX), float)
    corr = np.corrcoef(final.ravel(), pixels(preview).ravel())[0, 1]
    assert corr > 0.3, corr


def test_previews_go_where_preview_path_says_or_nowhere(tiny_model_dir: Path) -> None:
    events: list[str | None] = []
    generate(request(tiny_model_dir, "custom_preview", steps=2, preview_every=1,
                     preview_path="Projects/InProcess/previews/live.jpg"),
             lambda p, s, preview: events.append(preview))
    live = tiny_model_dir / "Projects/InProcess/previews/live.jpg"
    assert str(live) in events
    with Image.open(live) as img:
        assert img.format == "JPEG"

    result = generate(request(tiny_model_dir, "no_preview", preview_every=0),
                      lambda p, s, preview: events.append(preview))
    assert result.preview_path is None
    assert not result.output_path.with_name("no_preview.preview.png").exists()


def test_a_negative_prompt_runs_true_cfg_says_it_doubles_the_cost_and_changes_the_image(
    tiny_model_dir: Path,
) -> None:
    plain = generate(request(tiny_model_dir, "cfg_plain", cfg_scale=4.0))
    texts: list[str] = []
    negative = generate(request(tiny_model_dir, "cfg_negative", cfg_scale=4.0,
                                negative_prompt="blurry, low quality"),
                        lambda p, s, preview: texts.append(s))
    assert any("2x" in note for note in negative.notes)
    assert any("true CFG" in t and "2x" in t for t in texts)
    meta = read_metadata(negative.output_path)
    assert (meta["true_cfg_scale"], meta["guidance_scale"]) == (4.0, 1.0)
    assert meta["negative_prompt"] == "blurry, low quality"
    assert plain.output_path.read_bytes() != negative.output_path.read_bytes()


def test_a_negative_prompt_that_would_be_ignored_is_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(BadInput, match="negative prompt needs CFG_SCALE > 1") as info:
        generate(request(tiny_model_dir, "cfg_refused", cfg_scale=1.0, negative_prompt="blurry"))
    assert info.value.exit_code == 2


def test_raising_from_the_progress_callback_cancels_and_leaves_no_file(
    tiny_model_dir: Path,
) -> None:
    def cancel(percent: int, step: str, preview: str | None) -> None:
        if step.startswith("Denoising step 1/"):
            raise Cancelled("user pressed stop")

    req = request(tiny_model_dir, "cancelled", steps=4)
    with pytest.raises(FluxError, match="user pressed stop"):
        generate(req, cancel)
    renders = tiny_model_dir / "Projects/InProcess/03_Renders"
    assert not (renders / "cancelled.png").exists()
    assert not [p for p in renders.iterdir() if p.name.startswith(".cancelled")]
    # The cached pipeline is still usable afterwards.
    assert generate(request(tiny_model_dir, "after_cancel")).output_path.is_file()


def test_a_repeated_prompt_skips_the_text_encoders(tiny_model_dir: Path) -> None:
    generate(request(tiny_model_dir, "embed1", prompt="a quiet harbour"))
    entry = generation.cached_pipeline("standard", generation.default_model_dir(
        tiny_model_dir.resolve(), "standard"))
    assert entry is not None
    runs = entry.encode_count
    generate(request(tiny_model_dir, "embed2", prompt="a quiet harbour", seed=3))
    assert entry.encode_count == runs
    generate(request(tiny_model_dir, "embed3", prompt="a loud harbour"))
    assert entry.encode_count == runs + 1


def test_running_out_of_gpu_memory_is_exit_code_4_with_advice_and_no_file(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    def oom(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(generation, "render", oom)
    with pytest.raises(generation.OutOfMemory, match="try a smaller size or a lower quality"
                       ) as info:
        generate(request(tiny_model_dir, "oom"))
    assert info.value.exit_code == 4
    assert not (tiny_model_dir / "Projects/InProcess/03_Renders/oom.png").exists()
