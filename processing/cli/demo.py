"""CLI verbs of the demo: ``demo``."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo", short_help="Run the pipeline on synthetic scenes.")
    def demo_cmd(
        out: str = typer.Option("demo-out", "--out", help="Folder to write the synthetic Objects365 layout, datasets and report.json into (overwritten)."),
        scenes: int = typer.Option(300, "--scenes", min=1, help="Synthetic scenes to render."),
        seed: int = typer.Option(0, "--seed", help="Seed of the scenes and of every random choice of the pipeline."),
        workers: int = typer.Option(1, "--workers", min=1, help="Worker processes of the pipeline."),
        width: int = typer.Option(320, "--width", min=32, help="Image width in pixels."),
        height: int = typer.Option(240, "--height", min=32, help="Image height in pixels."),
        mono: bool = typer.Option(True, "--mono/--no-mono", help="Also run the variants on a depth model's depth: relative (scale, shifts of either sign) or meters (scale off by up to 35%), both with 15% per-object bias, blur, noise. Measured depth (exact, or an RGB-D sensor's) always runs."),
        variants: Optional[str] = typer.Option(None, "--variants", help="Comma-separated variants to run (default: exact,mono,mono-metric,detector,detector-mono,sensor): exact or detector-like boxes and keypoints; exact depth, monocular-like relative depth, a metric depth model's meters, or an RGB-D sensor's millimeters (noise growing with distance, flying pixels, projector shadows, nothing beyond 10 m)."),
        load: bool = typer.Option(True, "--load/--no-load", help="Load the result through the SpatialForge10M builder, images joined."),
        alone: bool = typer.Option(True, "--annotations-alone/--no-annotations-alone", help="Also run every variant on the annotations alone, without the detections file, to show what the detector beside them buys."),
        family: str = typer.Option("default", "--family", help="Scene family: default, or correlated (people always in front, cars and benches behind, fire hydrants on the left: what the cards' blind baselines and rebalancing are for)."),
    ) -> None:
        """Render scenes with known truth, run the pipeline on them, and print precision and yield per task.

        Everything is offline: scenes are rendered with numpy, written as an Objects365 v2 download
        with exact depth files, turned into QA by `generate`, judged against the truth from the
        rows' structured answers, and loaded back through the dataset builder.
        """
        from ..synth.demo import run_demo

        from ..synth.scenes import FAMILIES, VARIANTS

        passes = tuple(v.strip() for v in variants.split(",") if v.strip()) if variants else tuple(VARIANTS)
        unknown = [p for p in passes if p not in VARIANTS]
        if unknown:
            raise typer.BadParameter(f"--variants must be among {','.join(VARIANTS)}, got {','.join(unknown)}")
        if family not in FAMILIES:
            raise typer.BadParameter(f"--family must be one of {','.join(FAMILIES)}, got {family}")
        if not mono:
            passes = tuple(p for p in passes if VARIANTS[p].measured)
        result = run_demo(out, scenes=scenes, seed=seed, workers=workers, width=width, height=height,
                          passes=passes, load=load, progress=True, alone=alone,
                          family=family)  # fmt: skip
        typer.echo(result.table())
        typer.echo("yield = rows written / candidates; pass = candidates passing verification (before per-image caps);")
        typer.echo("precision = rows whose structured answer matches the truth; ambig = rows on pairs whose truth depends")
        typer.echo(f"on the definition (judged anyway). Full report with failures: {result.out / 'report.json'}")
