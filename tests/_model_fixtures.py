"""A folder of photos of two shapes and the three tiny model steps (detection, depth, pose) on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spatialforge.processing.pipeline import GenerateConfig


def make_model_scene(root: Path, n: int = 7) -> dict[str, str]:
    """``n`` PNG photos 128x96 and one EXIF-rotated JPEG (96x128 after transposing): batches mix
    input shapes, so a batch cut differently would change the model inputs. Tiny OWLv2 (grid
    boxes, so every image gets boxes), Depth Anything and ViTPose folders."""
    from PIL import Image

    from _tiny_models import TinyModels

    tiny = TinyModels(root / "models")
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(images / "img_rot.jpg", exif=exif)
    return {"images": str(images), "depth": tiny.depth_anything(), "detector": tiny.owlv2(grid_boxes=True),
            "pose": tiny.vitpose()}


def model_config(scene: dict[str, str], out: Path, pose: bool = True, **kw) -> GenerateConfig:
    """Detection -> depth -> [pose] -> tasks on the scene, batches of 3 (they straddle the shapes)."""
    kw = {"num_shards": 2, "batch_size": 3, "device": "cpu", "progress": False, **kw}
    return GenerateConfig(source="folder", source_name="tiny", images=scene["images"], out=str(out),
                          depth_model=scene["depth"], detector=scene["detector"], detector_labels=("person", "cup", "chair"),
                          pose_model=scene["pose"] if pose else None, **kw)
