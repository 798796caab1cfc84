"""Tiny ``transformers`` models built from configs, saved to a folder and loaded back offline.

No weights can be downloaded in tests: each factory builds a model with random weights from a
small config, saves it (model + processor) with ``save_pretrained`` and returns the folder, which
the steps then load through the same ``from_pretrained`` path users take. Random weights give
meaningless predictions: tests assert structure on them and correctness on conversion code.

Use through the session-scoped ``tiny_models`` fixture in the test modules::

    path = tiny_models.depth_anything()          # built once per test session
"""

from __future__ import annotations

import os
from pathlib import Path

# Tests must never reach the Hub; set before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

LABELS = ["person", "cup", "dog", "chair"]
WORDS = ["a", "photo", "of", "person", "cup", "dog", "chair", "cat", "car", "table", "bottle", "."]


def _quiet() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def write_clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer over :data:`WORDS` (each word merges into one token), saved to ``folder``.

    Id 0 is the pad token: OWL-ViT / OWLv2 treat a query whose first id is 0 as padding.
    """
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {"!": 0}
    merges: list[tuple[str, str]] = []
    for ch in sorted({c for w in WORDS for c in w}):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    for word in WORDS:
        # Merge left to right, ((p h) o) ..., so that each word becomes one token.
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
            pieces = [pair[0] + pair[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=16)
    tok.save_pretrained(folder)
    return tok


def _owl_text_config(tok) -> dict:
    return dict(
        vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, pad_token_id=0,
        bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"), eos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
    )


class TinyModels:
    """Builds each tiny model once into ``root/<name>`` and returns its path."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _once(self, name: str, build) -> str:
        folder = self.root / name
        if not (folder / "config.json").exists():
            _quiet()
            import torch

            torch.manual_seed(0)
            build(folder)
        return str(folder)

    # -- depth -------------------------------------------------------------------------------
    def depth_anything(self, metric: bool = False) -> str:
        def build(folder: Path) -> None:
            from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

            backbone = Dinov2Config(
                hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                patch_size=14, image_size=56, out_features=["stage1", "stage2", "stage3", "stage4"],
                reshape_hidden_states=False,
            )
            config = DepthAnythingConfig(
                backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                fusion_hidden_size=16, head_hidden_size=8,
                depth_estimation_type="metric" if metric else "relative", max_depth=20,
            )
            DepthAnythingForDepthEstimation(config).save_pretrained(folder)
            # Depth Anything's own preprocessing: keep the aspect ratio, sides multiples of 14.
            DPTImageProcessor(
                size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
            ).save_pretrained(folder)

        return self._once("depth-anything-metric" if metric else "depth-anything", build)

    def dpt(self) -> str:
        def build(folder: Path) -> None:
            from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

            config = DPTConfig(
                hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_in_index=-1,
            )
            DPTForDepthEstimation(config).save_pretrained(folder)
            DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(folder)

        return self._once("dpt", build)

    def depth_pro(self) -> str:
        """Tiny Depth Pro (with its field-of-view head). ``DepthProImageProcessor`` needs torchvision,
        so only its ``preprocessor_config.json`` is written, by hand, with the processor's defaults
        but a 128 px input."""

        def build(folder: Path) -> None:
            import json

            from transformers import DepthProConfig, DepthProForDepthEstimation

            patch = dict(model_type="dinov2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, patch_size=16, image_size=64)
            config = DepthProConfig(
                patch_size=64, scaled_images_ratios=[0.5, 1.0], scaled_images_overlap_ratios=[0.0, 0.0],
                scaled_images_feature_dims=[32, 32], merge_padding_value=0, fusion_hidden_size=16,
                intermediate_hook_ids=[1], intermediate_feature_dims=[32], use_fov_model=True,
                image_model_config=patch, patch_model_config=patch, fov_model_config=patch, num_fov_head_layers=1,
            )
            DepthProForDepthEstimation(config).save_pretrained(folder)
            (folder / "preprocessor_config.json").write_text(json.dumps({
                "image_processor_type": "DepthProImageProcessor", "size": {"height": 128, "width": 128},
                "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2,
            }))

        return self._once("depth-pro", build)

    # -- detection ---------------------------------------------------------------------------
    def detr(self) -> str:
        def build(folder: Path) -> None:
            from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

            backbone = ResNetConfig(
                embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                layer_type="basic", out_features=["stage4"],
            )
            config = DetrConfig(
                backbone_config=backbone, use_timm_backbone=False, d_model=32, encoder_layers=1,
                decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=10,
                id2label=dict(enumerate(LABELS)), label2id={v: k for k, v in enumerate(LABELS)},
            )
            DetrForObjectDetection(config).save_pretrained(folder)
            DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)

        return self._once("detr", build)

    def rt_detr(self) -> str:
        def build(folder: Path) -> None:
            from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig

            backbone = RTDetrResNetConfig(
                embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                layer_type="basic", out_features=["stage2", "stage3", "stage4"],
            )
            config = RTDetrConfig(
                backbone_config=backbone, encoder_in_channels=[16, 16, 32], encoder_hidden_dim=16,
                encoder_ffn_dim=16, encoder_attention_heads=2, d_model=16, decoder_in_channels=[16, 16, 16],
                decoder_ffn_dim=16, decoder_attention_heads=2, decoder_layers=1, num_queries=10,
                num_denoising=0, id2label=dict(enumerate(LABELS)), label2id={v: k for k, v in enumerate(LABELS)},
            )
            RTDetrForObjectDetection(config).save_pretrained(folder)
            RTDetrImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)

        return self._once("rt-detr", build)

    def owlv2(self, grid_boxes: bool = False) -> str:
        """Tiny OWLv2; ``grid_boxes=True`` zeroes the box head so that each image patch predicts its
        own cell (OWLv2 adds a per-patch position bias): varied, sensible boxes from random weights,
        for end-to-end runs that need objects."""

        def build(folder: Path) -> None:
            from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

            tok = write_clip_tokenizer(folder)
            config = Owlv2Config(
                text_config=_owl_text_config(tok),
                vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, image_size=32, patch_size=8),
                projection_dim=16,
            )
            model = Owlv2ForObjectDetection(config)
            if grid_boxes:
                import torch

                with torch.no_grad():
                    model.box_head.dense2.weight.zero_()
                    model.box_head.dense2.bias.zero_()
            model.save_pretrained(folder)
            Owlv2Processor(Owlv2ImageProcessor(size={"height": 32, "width": 32}), tok).save_pretrained(folder)

        return self._once("owlv2-grid" if grid_boxes else "owlv2", build)

    def owlvit(self) -> str:
        def build(folder: Path) -> None:
            from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

            tok = write_clip_tokenizer(folder)
            config = OwlViTConfig(
                text_config=_owl_text_config(tok),
                vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, image_size=32, patch_size=8),
                projection_dim=16,
            )
            OwlViTForObjectDetection(config).save_pretrained(folder)
            processor = OwlViTImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32})
            OwlViTProcessor(processor, tok).save_pretrained(folder)

        return self._once("owlvit", build)

    def grounding_dino(self) -> str:
        def build(folder: Path) -> None:
            from transformers import (
                BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig,
            )

            vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
            tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
            backbone = SwinConfig(
                embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=64,
                out_indices=[2, 3, 4],
            )
            text = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=64)
            config = GroundingDinoConfig(
                backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1, decoder_layers=2,
                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
                num_queries=10, num_feature_levels=4, encoder_n_points=2, decoder_n_points=2, max_text_len=64,
                fusion_dropout=0.0, init_std=0.02,
            )
            GroundingDinoForObjectDetection(config).save_pretrained(folder)
            GroundingDinoProcessor(GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}), tok).save_pretrained(folder)

        return self._once("grounding-dino", build)

    # -- pose --------------------------------------------------------------------------------
    def vitpose(self) -> str:
        def build(folder: Path) -> None:
            from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

            backbone = VitPoseBackboneConfig(
                hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                image_size=[64, 48], patch_size=[8, 8], out_indices=[1],
            )
            config = VitPoseConfig(backbone_config=backbone, num_labels=17, use_simple_decoder=True)
            VitPoseForPoseEstimation(config).save_pretrained(folder)
            VitPoseImageProcessor(size={"height": 64, "width": 48}).save_pretrained(folder)

        return self._once("vitpose", build)
