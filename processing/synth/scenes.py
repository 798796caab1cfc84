"""Synthetic 3D scenes with known truth, rendered with numpy.

Every scene is a pinhole camera above a ground plane with simple solids standing on it (boxes,
vertical cylinders, spheres and thin billboards composed into Objects365 categories; some lifted
off the ground, as on a shelf the annotations do not box) and people with a known facing direction. A z-buffer renderer gives the RGB image, the exact metric depth map
(camera-space ``z`` in meters, ``0`` where a ray sees sky), an instance map and, from the visible
pixels, the 2D boxes a human annotator would draw. People carry the 17 COCO keypoints projected
through the camera, with body sides right: a person facing the camera has their LEFT shoulder on
the image's RIGHT.

Frames (all right-handed worries avoided by explicit vectors):

* world: ``X`` to the camera's right, ``Y`` up, ``Z`` ahead of the camera on the ground; the ground
  is ``Y = 0``; the camera sits at ``(0, height, 0)`` looking along ``+Z``, pitched down by ``pitch``.
* camera: ``x`` right, ``y`` down, ``z`` forward (OpenCV); pixel ``(col, row)`` covers
  ``[col, col + 1) x [row, row + 1)`` and its ray passes through the pixel center.
* object: yaw ``psi`` about ``Y``; local ``+z`` (``forward``) is ``(sin psi, 0, cos psi)`` and
  local ``+x`` is ``(cos psi, 0, -sin psi)``, which for a person is their RIGHT side.

Everything is deterministic from ``(seed, index)``.

Example:
    >>> scene = make_scene(seed=0, index=3, width=160, height=120)
    >>> scene.depth.shape, scene.image.dtype.name
    ((120, 160), 'uint8')
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import MIN_VISIBLE_PIXELS

logger = logging.getLogger(__name__)

SKY = 0.0
"""Depth value of pixels that see no surface (sky): a hole, as sensors write it."""

COCO_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
COCO_SKELETON: list[list[int]] = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
    [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]  # fmt: skip

# Joint positions of a 1.75 m person in their own frame: (x = their right, y = up, z = forward).
_JOINTS = np.array(
    [
        [0.0, 1.60, 0.11],  # nose
        [-0.035, 1.63, 0.095], [0.035, 1.63, 0.095],  # eyes (left is -x)
        [-0.10, 1.60, 0.0], [0.10, 1.60, 0.0],  # ears
        [-0.20, 1.43, 0.0], [0.20, 1.43, 0.0],  # shoulders
        [-0.24, 1.14, 0.0], [0.24, 1.14, 0.0],  # elbows
        [-0.25, 0.86, 0.03], [0.25, 0.86, 0.03],  # wrists
        [-0.11, 0.92, 0.0], [0.11, 0.92, 0.0],  # hips
        [-0.11, 0.50, 0.0], [0.11, 0.50, 0.0],  # knees
        [-0.11, 0.08, 0.0], [0.11, 0.08, 0.0],  # ankles
    ]
)
_HIP_HEIGHT = 0.92  # the hips' height in ``_JOINTS``: the upper body leans about it
# Keypoints on the face are labeled only when their surface faces the camera (outward normal in the
# person's frame); body joints are labeled whenever they fall inside the image.
_FACE_NORMALS = {0: (0, 0, 1), 1: (0, 0, 1), 2: (0, 0, 1), 3: (-1, 0, 0), 4: (1, 0, 0)}


# ------------------------------------------------------------------ categories (data)
@dataclass(frozen=True)
class Part:
    """One solid of an object, in the object's frame. ``kind``: box | cyl | sphere.

    box: ``center`` (x, y, z) and ``size`` (w, h, d); cyl: vertical, ``center`` (x, y0, z) is the
    bottom center, ``size`` (radius, height, unused); sphere: ``center`` and ``size[0]`` radius.
    """

    kind: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    shade: float = 1.0  # brightness factor of this part relative to the object color
    color: tuple[int, int, int] | None = None  # own color (e.g. a face), else the object's


@dataclass(frozen=True)
class Category:
    """An Objects365 category as a composition of parts (meters, before per-instance scaling)."""

    name: str  # Objects365 v2 category name, as written to the annotation JSON
    parts: tuple[Part, ...]
    distance: tuple[float, float]  # ground distance range from the camera the category is placed at
    color: tuple[int, int, int]
    scale_jitter: float = 0.1


def _box(w, h, d, y0=0.0, x=0.0, z=0.0, shade=1.0) -> Part:
    return Part("box", (x, y0 + h / 2, z), (w, h, d), shade)


def _cyl(r, h, y0=0.0, x=0.0, z=0.0, shade=1.0) -> Part:
    return Part("cyl", (x, y0, z), (r, h, 0.0), shade)


def _sphere(r, y, x=0.0, z=0.0, shade=1.0, color=None) -> Part:
    return Part("sphere", (x, y, z), (r, 0.0, 0.0), shade, color)


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        Category("Person", (_box(0.36, 0.92, 0.2, shade=0.6), _box(0.46, 0.56, 0.26, 0.9), _sphere(0.11, 1.6, color=(225, 180, 150))),
                 (2.5, 14.0), (40, 90, 170)),
        Category("Chair", (_box(0.46, 0.46, 0.46), _box(0.46, 0.46, 0.06, 0.46, z=-0.2, shade=0.8)), (2.0, 9.0), (150, 90, 40)),
        Category("Car", (_box(1.8, 0.75, 4.3, 0.2), _box(1.6, 0.55, 2.2, 0.95, z=-0.2, shade=0.7)), (6.0, 25.0), (190, 30, 30)),
        Category("Bottle", (_cyl(0.04, 0.19), _cyl(0.015, 0.07, 0.19, shade=0.8)), (1.2, 3.5), (40, 150, 60)),
        Category("Cup", (_cyl(0.05, 0.11),), (1.0, 3.0), (230, 230, 220)),
        Category("Dog", (_box(0.24, 0.3, 0.7, 0.28), _box(0.2, 0.28, 0.7, 0.0, shade=0.7), _box(0.18, 0.2, 0.22, 0.5, z=0.38, shade=1.1)),
                 (2.0, 12.0), (170, 120, 70)),
        Category("Potted Plant", (_cyl(0.16, 0.3, shade=0.7), _sphere(0.3, 0.55)), (2.0, 10.0), (50, 140, 50)),
        Category("Bench", (_box(1.5, 0.45, 0.45), _box(1.5, 0.4, 0.06, 0.45, z=-0.2, shade=0.8)), (3.0, 15.0), (120, 80, 50)),
        Category("Trash bin Can", (_cyl(0.25, 0.8),), (2.5, 15.0), (90, 90, 100)),
        Category("Traffic cone", (_cyl(0.18, 0.1, shade=0.6), _cyl(0.1, 0.6, 0.1)), (3.0, 15.0), (250, 120, 20)),
        Category("Fire Hydrant", (_cyl(0.14, 0.7), _box(0.4, 0.1, 0.1, 0.45, shade=0.8)), (3.0, 15.0), (200, 40, 40)),
        Category("Bicycle", (_box(1.7, 1.0, 0.06, shade=0.9),), (3.0, 15.0), (30, 120, 200)),  # a billboard
        Category("Stool", (_cyl(0.2, 0.5),), (2.0, 8.0), (160, 130, 100)),
        Category("Backpack", (_box(0.32, 0.45, 0.2),), (1.5, 7.0), (60, 60, 120)),
        Category("Vase", (_cyl(0.08, 0.3),), (1.2, 4.0), (180, 60, 160)),
        Category("Traffic Light", (_cyl(0.06, 2.2, shade=0.5), _box(0.3, 0.8, 0.25, 2.2)), (5.0, 20.0), (230, 200, 30)),
        Category("Umbrella", (_cyl(0.03, 1.6, shade=0.5), _cyl(0.7, 0.12, 1.6)), (3.0, 14.0), (220, 60, 120)),
    )
}  # fmt: skip
PERSON = "Person"


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the scene generator (data, not code)."""

    objects: tuple[int, int] = (4, 10)  # min/max number of solids per scene (people included)
    people: tuple[int, int] = (0, 3)
    duplicate_prob: float = 0.5  # chance a scene repeats one label several times (counting, grounding)
    min_visible_fraction: float = 0.5  # annotate an object only if this share of it is unoccluded
    min_visible_pixels: int = 60  # ... and it covers at least this many pixels
    fov_deg: tuple[float, float] = (30.0, 100.0)  # horizontal field of view (telephoto to wide angle)
    camera_height: tuple[float, float] = (0.6, 2.5)
    pitch_deg: tuple[float, float] = (-5.0, 25.0)  # downwards (negative: looking slightly up)
    people_turned_anywhere: bool = True  # person yaw uniform in [-180, 180) degrees from facing the camera
    facing_jitter_deg: float = 25.0  # without people_turned_anywhere: toward/away deviate up to this
    sideways_jitter_deg: float = 15.0
    truncation: bool = True  # objects may be cut by the frame (at least ``min_in_frame`` of their extent inside)
    min_in_frame: float = 0.4  # share of a solid's projected width and height that must lie inside the frame
    wall_prob: float = 0.5  # chance a scene ends in a wall (no sky) instead of open ground and sky
    wall_distance: tuple[float, float] = (6.0, 30.0)  # meters ahead of the camera, on the ground
    max_ground_distance: float = 80.0  # ground farther than this is rendered as sky (a hole)
    # Label priors, as photos have them: (category, near, far) ground distances replacing the
    # category's own range, and categories placed only in the image's left third.
    distances: tuple[tuple[str, float, float], ...] = ()
    left_categories: tuple[str, ...] = ()
    # Objects off the ground (on a shelf, a wall bracket, a ledge the annotations do not box): the
    # chance a non-person object is lifted, and by how much (meters): its box bottom is then no
    # ground contact.
    lift_prob: float = 0.15
    lift: tuple[float, float] = (0.3, 1.5)
    # Sloped ground, the camera standing on its origin: the slope across the view (rising to the
    # camera's right: the same image row is nearer ground on one side) and along it, in degrees.
    # Steeper downhill views with a wall close behind leave the whole image within less than
    # VerifyConfig.min_far_near_ratio of depth, which the relative-depth shift bound assumes.
    ground_roll_deg: tuple[float, float] = (-8.0, 8.0)
    ground_pitch_deg: tuple[float, float] = (-3.0, 3.0)
    # People leaning (sitting at a table, on a bicycle, picking something up): the upper body's
    # keypoints tilt forward about the hip axis by an angle in ``torso_lean_deg`` and sideways by
    # up to ``side_lean_deg`` either way, per person (the rendered body stays upright; a keypoint
    # is seen where the upright body is). A torso leaning toward the camera looks short: its
    # shoulders look as wide for its length as a frontal person's do.
    torso_lean_deg: tuple[float, float] = (0.0, 45.0)
    side_lean_deg: float = 10.0

    def __post_init__(self) -> None:
        unknown = [c for c, *_ in self.distances if c not in CATEGORIES] + [c for c in self.left_categories if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"distances and left_categories must name categories of CATEGORIES, got {unknown}")
        bad = [(c, lo, hi) for c, lo, hi in self.distances if not 0 < lo <= hi]
        if bad:
            raise ValueError(f"distances must satisfy 0 < near <= far, got {bad}")

    def distance(self, category: str) -> tuple[float, float]:
        """Ground distance range a category is placed at (``distances``, else the category's own)."""
        for name, lo, hi in self.distances:
            if name == category:
                return lo, hi
        return CATEGORIES[category].distance


DEFAULT_CONFIG = SceneConfig()
NARROW_CONFIG = SceneConfig(
    fov_deg=(55.0, 70.0), camera_height=(1.2, 1.8), pitch_deg=(2.0, 14.0), people_turned_anywhere=False,
    truncation=False, wall_prob=0.0, lift_prob=0.0, ground_roll_deg=(0.0, 0.0), ground_pitch_deg=(0.0, 0.0),
    torso_lean_deg=(0.0, 0.0), side_lean_deg=0.0,
)
"""The scenes of earlier releases: upright people within 25 degrees of toward/away, 55-70 degree
views, sky at the far end, every solid inside the frame."""
CORRELATED_CONFIG = SceneConfig(
    people=(2, 5), wall_prob=0.8, wall_distance=(32.0, 40.0),
    distances=(("Person", 2.0, 5.0), ("Car", 12.0, 30.0), ("Traffic Light", 12.0, 30.0), ("Bench", 10.0, 25.0)),
    left_categories=("Fire Hydrant",),
)
"""Scenes with a deliberate label-depth and label-side correlation, stronger than the categories'
own ranges: people always in front (2-5 m), cars, traffic lights and benches behind (10-30 m), walls
behind everything, fire hydrants always in the image's left third. A text-only model answers many
of their relation questions from the labels alone until the rows are rebalanced."""
FAMILIES: dict[str, SceneConfig] = {"default": DEFAULT_CONFIG, "correlated": CORRELATED_CONFIG}
"""Scene families by name (``spatialforge demo --family``)."""


@dataclass(frozen=True)
class AnnotationNoise:
    """How observed boxes and keypoints differ from the exact ones (a detector and a pose model).

    ``box_jitter``: each box edge moves by up to this share of the box's width (x edges) or height
    (y edges), uniformly; ``keypoint_sigma``: gaussian keypoint noise, a share of the person box's
    height; ``keypoint_drop``: chance a labeled keypoint is missing.
    """

    box_jitter: float = 0.0
    keypoint_sigma: float = 0.0
    keypoint_drop: float = 0.0

    @property
    def exact(self) -> bool:
        return self.box_jitter == 0 and self.keypoint_sigma == 0 and self.keypoint_drop == 0


EXACT_ANNOTATIONS = AnnotationNoise()
DETECTOR_LIKE = AnnotationNoise(box_jitter=0.06, keypoint_sigma=0.015, keypoint_drop=0.1)
"""Detector-like boxes (each edge off by up to 6 % of the box size) and pose-model-like keypoints
(noise of 1.5 % of the person's height, about 5 % of the torso; one keypoint in ten missing)."""


@dataclass(frozen=True)
class DepthNoise:
    """Monocular-like depth errors (see :func:`corrupt_depth`); ``None`` in a variant: exact depth.

    ``metric``: a metric model's meters instead of relative inverse depth: the same per-object
    bias, blur and noise, no shift, and a global scale off by a factor within
    ``exp(-scale_error) .. exp(scale_error)`` (a model's metric scale is a guess from the image).
    """

    object_bias: float = 0.15
    shift: tuple[float, float] = (-0.2, 0.2)
    blur_sigma: float = 1.5
    noise: float = 0.01
    metric: bool = False
    scale_error: float = 0.3

    @property
    def folder(self) -> str:
        """The demo layout's folder of depth files observed this way."""
        return "depth_metric" if self.metric else "depth_mono"


@dataclass(frozen=True)
class SensorNoise:
    """How a structured-light RGB-D sensor (Kinect-like) measures the depth (see :func:`sensor_depth`).

    ``sigma``: axial noise ``sigma[0] + sigma[1] * (z - 0.4)^2`` meters (Kinect's published fit);
    ``baseline``: meters between projector and camera, which cast a shadow (no measurement) beside
    every near silhouette (0: none); ``subpixel``: disparity is resolved to ``1 / subpixel`` of a
    pixel of the sensor's own ``focal`` (Kinect: 580 px at 640x480), so depth comes in steps that
    grow with the square of the distance (0: not quantized); ``mixed``: chance that a pixel on a
    silhouette reads between the two surfaces (a flying pixel); ``max_range``: meters beyond which
    the sensor returns nothing (RealSense-like: 10). The files are 16-bit PNGs in millimeters,
    holes 0, as NYU and RealSense write them: what ``generate`` reads as measured.
    """

    sigma: tuple[float, float] = (0.0012, 0.0019)
    baseline: float = 0.075
    subpixel: float = 8.0
    focal: float = 580.0
    mixed: float = 0.8
    max_range: float = 10.0

    @property
    def folder(self) -> str:
        return "depth_sensor"


@dataclass(frozen=True)
class Variant:
    """One way of observing the scenes: exact or detector-like annotations; exact depth, a model's
    (monocular-like) or a sensor's."""

    name: str
    annotations: AnnotationNoise = EXACT_ANNOTATIONS
    depth: DepthNoise | SensorNoise | None = None
    title: str = ""

    @property
    def measured(self) -> bool:
        """Is the depth a measurement (exact, or a sensor's), not a model's estimate?"""
        return self.depth is None or isinstance(self.depth, SensorNoise)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("exact", title="exact boxes and keypoints, exact metric depth"),
        Variant("mono", depth=DepthNoise(), title="exact boxes, monocular-like depth (bias 0.15, shifts of both signs)"),
        Variant("mono-metric", depth=DepthNoise(metric=True),
                title="exact boxes, a metric depth model's meters (bias 0.15, scale off by up to 35 %)"),
        Variant("detector", annotations=DETECTOR_LIKE, title="detector-like boxes and noisy keypoints, exact depth"),
        Variant("detector-mono", annotations=DETECTOR_LIKE, depth=DepthNoise(),
                title="detector-like boxes and noisy keypoints, monocular-like depth"),
        Variant("sensor", depth=SensorNoise(),
                title="exact boxes, an RGB-D sensor's depth (noise growing with distance, flying pixels, shadows)"),
    )
}
"""The variants every precision table covers: what the verification must hold on."""


# ------------------------------------------------------------------ scene types
@dataclass(frozen=True)
class Camera:
    """Pinhole camera above the ground, pitched down."""

    fx: float
    fy: float
    cx: float
    cy: float
    height: float  # meters above the ground
    pitch: float  # radians, positive looks down

    @property
    def rotation(self) -> np.ndarray:
        """Camera-to-world rotation (columns: camera right, down, forward in world coordinates)."""
        s, c = math.sin(self.pitch), math.cos(self.pitch)
        right, down, forward = [1.0, 0.0, 0.0], [0.0, -c, -s], [0.0, -s, c]
        return np.array([right, down, forward]).T

    @property
    def center(self) -> np.ndarray:
        return np.array([0.0, self.height, 0.0])

    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """``(..., 3)`` world points -> camera coordinates (x right, y down, z forward)."""
        return (np.asarray(points, float) - self.center) @ self.rotation

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """Camera points -> pixel ``(u, v)`` (continuous; pixel centers at ``i + 0.5``)."""
        p = np.asarray(points_cam, float)
        return np.stack([self.fx * p[..., 0] / p[..., 2] + self.cx, self.fy * p[..., 1] / p[..., 2] + self.cy], -1)

    def to_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in ("fx", "fy", "cx", "cy", "height", "pitch")}


@dataclass
class SceneObject:
    """One solid in a scene and everything true about it."""

    instance: int  # value of this object in ``Scene.instances``
    category: str  # Objects365 category name
    position: np.ndarray  # world (X, lift, Z) of the footprint center (lift 0: on the ground)
    yaw: float  # radians, see module docstring
    scale: float
    center_cam: np.ndarray  # camera-space center of the solid's bounding volume
    z_range: tuple[float, float]  # camera-space z extent of the whole solid (visible or not)
    u_range: tuple[float, float]  # image-x extent of the whole solid's silhouette (unoccluded)
    box: tuple[float, float, float, float] | None = None  # visible pixels, [x1, y1, x2, y2) in pixels
    visible_pixels: int = 0
    own_pixels: int = 0  # pixels the solid would cover with nothing in front of it
    annotated: bool = False
    keypoints: np.ndarray | None = None  # (17, 3) COCO (x, y, v) for people
    facing: str | None = None  # toward_camera | away_from_camera | sideways (people)
    yaw_to_camera_deg: float | None = None  # 0: faces the camera exactly, 180: faces away

    @property
    def label(self) -> str:
        """The label as the pipeline writes it (lowercase category name)."""
        return self.category.lower()

    @property
    def visible_fraction(self) -> float:
        return self.visible_pixels / self.own_pixels if self.own_pixels else 0.0

    @property
    def fill(self) -> float:
        """Share of the visible box the object's pixels cover (an umbrella or a lamp post: low)."""
        if self.box is None:
            return 0.0
        x1, y1, x2, y2 = self.box
        return self.visible_pixels / max((x2 - x1) * (y2 - y1), 1.0)

    @property
    def depth(self) -> float:
        """Truth for nearness: camera-space z of the center of the solid's bounding volume."""
        return float(self.center_cam[2])

    @property
    def distance(self) -> float:
        """Euclidean distance from the camera center to the solid's center."""
        return float(np.linalg.norm(self.center_cam))

    def forward_world(self) -> np.ndarray:
        return np.array([math.sin(self.yaw), 0.0, math.cos(self.yaw)])

    def right_world(self) -> np.ndarray:
        return np.array([math.cos(self.yaw), 0.0, -math.sin(self.yaw)])


@dataclass
class Scene:
    """A rendered scene: image, exact depth, instance map, camera and objects with their truth."""

    seed: int
    index: int
    width: int
    height: int
    camera: Camera
    image: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 meters (camera-space z), 0 = sky
    instances: np.ndarray  # (H, W) int16, -1 = ground/sky/wall, else SceneObject.instance
    objects: list[SceneObject] = field(default_factory=list)
    wall: float | None = None  # world Z of the wall that closes the view (None: open ground and sky)
    ground_slope: tuple[float, float] = (0.0, 0.0)  # ground rise per meter along world X and Z

    @property
    def image_id(self) -> str:
        """Objects365-style file stem (ids start at 1)."""
        return objects365_stem(self.index + 1)

    @property
    def annotated(self) -> list[SceneObject]:
        return [o for o in self.objects if o.annotated]

    @property
    def focal_35mm(self) -> int | None:
        """The EXIF ``FocalLengthIn35mmFilm`` a camera would write (every other scene: photos
        without EXIF are common too); the focal length in pixels is this / 43.27 * the diagonal."""
        if self.index % 2:
            return None
        return max(1, round(self.camera.fx / math.hypot(self.width, self.height) * math.hypot(36.0, 24.0)))

    def world_to_person(self, person: SceneObject, point_world: np.ndarray) -> tuple[float, float]:
        """``(lateral, ahead)`` of a world point in a person's frame (lateral > 0: their right)."""
        rel = np.asarray(point_world, float) - person.position
        return float(rel @ person.right_world()), float(rel @ person.forward_world())

    def truth(self) -> dict[str, Any]:
        """JSON-able truth of the annotated objects (and the rest, flagged ``annotated: false``)."""
        cam = self.camera
        objs = []
        for o in self.objects:
            center_world = cam.center + cam.rotation @ o.center_cam
            item: dict[str, Any] = {
                "instance": o.instance,
                "label": o.label,
                "category": o.category,
                "annotated": o.annotated,
                "box": None if o.box is None else [float(v) for v in o.box],
                "center_cam": [float(v) for v in o.center_cam],
                "center_world": [float(v) for v in center_world],
                "depth": o.depth,
                "distance": o.distance,
                "z_range": [float(v) for v in o.z_range],
                "u_range": [float(v) for v in o.u_range],
                "visible_fraction": round(o.visible_fraction, 4),
                "visible_pixels": o.visible_pixels,
                "fill": round(o.fill, 4),
            }
            if o.category == PERSON:
                item.update(
                    facing=o.facing,
                    yaw_to_camera_deg=o.yaw_to_camera_deg,
                    position_world=[float(v) for v in o.position],
                    forward_world=[float(v) for v in o.forward_world()],
                    right_world=[float(v) for v in o.right_world()],
                )
            objs.append(item)
        return {"image_id": self.image_id, "width": self.width, "height": self.height, "camera": cam.to_dict(),
                "wall": self.wall, "ground_slope": list(self.ground_slope), "objects": objs}

    def observed(self, noise: AnnotationNoise = EXACT_ANNOTATIONS) -> tuple[np.ndarray, np.ndarray]:
        """Boxes ``(n, 4)`` and COCO keypoints ``(n, 17, 3)`` (NaN for non-people) of the annotated
        objects as ``noise`` observes them (deterministic per scene); exact for the default."""
        annotated = self.annotated
        boxes = np.array([o.box for o in annotated], float).reshape(-1, 4)
        kps = np.full((len(annotated), 17, 3), np.nan, np.float32)
        for k, o in enumerate(annotated):
            if o.keypoints is not None:
                kps[k] = o.keypoints
        if noise.exact or not len(annotated):
            return boxes, kps
        rng = scene_rng(self.seed, self.index, "observed")
        size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)  # (w, h, w, h)
        moved = boxes + rng.uniform(-noise.box_jitter, noise.box_jitter, boxes.shape) * size
        lo, hi = np.minimum(moved[:, :2], moved[:, 2:]), np.maximum(moved[:, :2], moved[:, 2:])
        limit = np.array([self.width, self.height], float)
        boxes = np.concatenate([np.clip(lo, 0, limit), np.clip(np.maximum(hi, lo + 1), 0, limit)], axis=1)
        for k, o in enumerate(annotated):
            if o.keypoints is None:
                continue
            kp = o.keypoints.astype(np.float64).copy()
            labeled = kp[:, 2] > 0
            sigma = noise.keypoint_sigma * (o.box[3] - o.box[1])
            kp[:, :2] += rng.normal(0.0, 1.0, (17, 2)) * sigma
            dropped = labeled & (rng.random(17) < noise.keypoint_drop)
            kp[~labeled | dropped] = 0.0
            kps[k] = kp
        return boxes, kps


def objects365_stem(image_number: int) -> str:
    return f"objects365_v2_{image_number:08d}"


# ------------------------------------------------------------------ generation
def scene_rng(seed: int, index: int, salt: str = "scene") -> np.random.Generator:
    """A generator derived from ``(seed, index, salt)`` by a stable hash (same bytes everywhere)."""
    digest = hashlib.sha256(f"spatialforge-synth/{salt}/{seed}/{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _object_aabb(cat: Category, scale: float) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for p in cat.parts:
        c = np.array(p.center)
        if p.kind == "box":
            h = np.array(p.size) / 2
            plo, phi = c - h, c + h
        elif p.kind == "cyl":
            r, hh = p.size[0], p.size[1]
            plo, phi = c - [r, 0, r], c + [r, hh, r]
        else:
            r = p.size[0]
            plo, phi = c - r, c + r
        lo, hi = np.minimum(lo, plo), np.maximum(hi, phi)
    return lo * scale, hi * scale


def _corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


def _yaw_matrix(yaw: float) -> np.ndarray:
    """Object-to-world rotation: columns are the object's right, up and forward axes."""
    s, c = math.sin(yaw), math.cos(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def make_scene(
    seed: int,
    index: int,
    width: int = 320,
    height: int = 240,
    config: SceneConfig = DEFAULT_CONFIG,
) -> Scene:
    """Build and render scene ``index`` of the family ``seed`` (deterministic)."""
    rng = scene_rng(seed, index)
    fov = math.radians(rng.uniform(*config.fov_deg))
    f = width / 2 / math.tan(fov / 2)
    cam = Camera(f, f, width / 2, height / 2, float(rng.uniform(*config.camera_height)), math.radians(rng.uniform(*config.pitch_deg)))

    wall = float(rng.uniform(*config.wall_distance)) if rng.random() < config.wall_prob else None
    slope = (0.0, 0.0)
    if config.ground_roll_deg != (0.0, 0.0) or config.ground_pitch_deg != (0.0, 0.0):  # its own stream, as the lifts
        ground_rng = scene_rng(seed, index, "ground")
        slope = (math.tan(math.radians(ground_rng.uniform(*config.ground_roll_deg))),
                 math.tan(math.radians(ground_rng.uniform(*config.ground_pitch_deg))))
    names = [n for n in CATEGORIES if n != PERSON]
    n_people = int(rng.integers(config.people[0], config.people[1] + 1))
    n_total = max(n_people, int(rng.integers(config.objects[0], config.objects[1] + 1)))
    wanted = [PERSON] * n_people
    if rng.random() < config.duplicate_prob:
        dup = str(rng.choice(names))
        wanted += [dup] * int(rng.integers(2, 5))
    while len(wanted) < n_total:
        wanted.append(str(rng.choice(names)))
    wanted = wanted[: max(n_total, n_people)]

    placed: list[tuple[SceneObject, Category, np.ndarray, np.ndarray]] = []
    footprints: list[tuple[float, float, float]] = []  # (X, Z, radius)
    lift_rng = scene_rng(seed, index, "lift")  # its own stream: the other draws stay those of ground-only scenes
    for name in wanted:
        lifted = name != PERSON and config.lift_prob > 0 and lift_rng.random() < config.lift_prob
        lift = float(lift_rng.uniform(*config.lift)) if lifted else 0.0
        cat = CATEGORIES[name]
        for _ in range(30):  # rejection sampling: in view, not intersecting another solid
            scale = float(1.0 + rng.uniform(-cat.scale_jitter, cat.scale_jitter))
            lo, hi = _object_aabb(cat, scale)
            dist = float(rng.uniform(*config.distance(name)))
            u_lo, u_hi = (-0.1, 1.1) if config.truncation else (0.05, 0.95)
            if name in config.left_categories:
                u_hi = 1.0 / 3.0
            u = float(rng.uniform(u_lo, u_hi)) * width
            gz = dist
            gx = (u - cam.cx) / cam.fx * (gz * math.cos(cam.pitch) + cam.height * math.sin(cam.pitch))
            radius = float(np.hypot(max(abs(lo[0]), hi[0]), max(abs(lo[2]), hi[2])))
            if any(math.hypot(gx - x, gz - z) < radius + r + 0.05 for x, z, r in footprints):
                continue
            if name == PERSON:
                yaw, facing, delta = _person_yaw(rng, gx, gz, config)
            else:
                yaw, facing, delta = float(rng.uniform(-math.pi, math.pi)), None, None
            pos = np.array([gx, slope[0] * gx + slope[1] * gz + lift, gz])
            rot = _yaw_matrix(yaw)
            corners_cam = cam.world_to_camera(_corners(lo, hi) @ rot.T + pos)
            if (corners_cam[:, 2] < 0.3).any():
                continue
            if wall is not None and float((_corners(lo, hi) @ rot.T + pos)[:, 2].max()) > wall - 0.2:
                continue  # in front of the wall
            uv = cam.project(corners_cam)
            if not _in_frame(uv, width, height, config):
                continue
            center_cam = cam.world_to_camera(rot @ ((lo + hi) / 2) + pos)
            obj = SceneObject(
                instance=len(placed),
                category=name,
                position=pos,
                yaw=yaw,
                scale=scale,
                center_cam=center_cam,
                z_range=(float(corners_cam[:, 2].min()), float(corners_cam[:, 2].max())),
                u_range=(float(uv[:, 0].min()), float(uv[:, 0].max())),
                facing=facing,
                yaw_to_camera_deg=delta,
            )
            placed.append((obj, cat, rot, uv))
            footprints.append((gx, gz, radius))
            break

    scene = _render(seed, index, width, height, cam, placed, rng, config, wall, slope)
    return scene


def _in_frame(uv: np.ndarray, width: int, height: int, config: SceneConfig) -> bool:
    """Whether a solid's projected corners lie in the frame: wholly, or (``truncation``) at least
    ``min_in_frame`` of their width and height."""
    u0, u1, v0, v1 = float(uv[:, 0].min()), float(uv[:, 0].max()), float(uv[:, 1].min()), float(uv[:, 1].max())
    if not config.truncation:
        return u0 >= 0 and u1 <= width and v0 >= 0 and v1 <= height
    inside_u = (min(u1, width) - max(u0, 0.0)) / max(u1 - u0, 1e-9)
    inside_v = (min(v1, height) - max(v0, 0.0)) / max(v1 - v0, 1e-9)
    return inside_u >= config.min_in_frame and inside_v >= config.min_in_frame


def _person_yaw(rng: np.random.Generator, gx: float, gz: float, config: SceneConfig) -> tuple[float, str, float]:
    """Yaw of a person, their facing label, and the angle between their forward and the camera."""
    toward = math.atan2(-gx, -gz)  # yaw whose forward points at the camera (on the ground)
    if config.people_turned_anywhere:
        delta = float(rng.uniform(-180.0, 180.0))
        kind = "toward_camera" if abs(delta) < 60 else "away_from_camera" if abs(delta) > 120 else "sideways"
        return toward + math.radians(delta), kind, delta
    kind = str(rng.choice(["toward_camera", "away_from_camera", "sideways"], p=[0.45, 0.4, 0.15]))
    if kind == "toward_camera":
        delta = rng.uniform(-config.facing_jitter_deg, config.facing_jitter_deg)
    elif kind == "away_from_camera":
        delta = 180.0 + rng.uniform(-config.facing_jitter_deg, config.facing_jitter_deg)
    else:
        delta = float(rng.choice([-90.0, 90.0])) + rng.uniform(-config.sideways_jitter_deg, config.sideways_jitter_deg)
    delta = (delta + 180.0) % 360.0 - 180.0
    return toward + math.radians(delta), kind, float(delta)


# ------------------------------------------------------------------ rendering
@lru_cache(maxsize=16)
def _rays(width: int, height: int, fx: float, fy: float, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space ray directions with ``z = 1`` (so the ray parameter is the depth)."""
    u = (np.arange(width) + 0.5 - cx) / fx
    v = (np.arange(height) + 0.5 - cy) / fy
    return np.broadcast_to(u[None, :], (height, width)), np.broadcast_to(v[:, None], (height, width))


_CLOTHES = ((40, 90, 170), (170, 40, 40), (60, 130, 60), (200, 180, 60), (90, 60, 120), (60, 60, 60))
_LIGHT = np.array([0.4, 0.8, -0.45]) / np.linalg.norm([0.4, 0.8, -0.45])


def _hit_part(part: Part, scale: float, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameter of the first hit (inf if none) and the local normal, for rays ``o + t d``.

    ``o`` is one local origin (3,), ``d`` is (3, M) local directions.
    """
    c = np.array(part.center) * scale
    m = d.shape[1]
    normal = np.zeros((3, m))
    if part.kind == "box":
        half = np.array(part.size) * scale / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)
            t1 = ((c - half - o)[:, None]) * inv
            t2 = ((c + half - o)[:, None]) * inv
        tlo, thi = np.minimum(t1, t2), np.maximum(t1, t2)
        axis = tlo.argmax(0)
        tmin = tlo[axis, np.arange(m)]
        tmax = thi.min(0)
        hit = (tmax >= tmin) & (tmin > 0)
        t = np.where(hit, tmin, np.inf)
        normal[axis, np.arange(m)] = -np.sign(d[axis, np.arange(m)])
        return t, normal
    if part.kind == "cyl":
        r, h = part.size[0] * scale, part.size[1] * scale
        ox, oz = o[0] - c[0], o[2] - c[2]
        a = d[0] ** 2 + d[2] ** 2
        b = 2 * (ox * d[0] + oz * d[2])
        cc = ox**2 + oz**2 - r**2
        disc = b**2 - 4 * a * cc
        with np.errstate(invalid="ignore", divide="ignore"):
            ts = (-b - np.sqrt(disc)) / (2 * a)
        y = o[1] + ts * d[1]
        side = (disc >= 0) & (ts > 0) & (y >= c[1]) & (y <= c[1] + h)
        t = np.where(side, ts, np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            tt = (c[1] + h - o[1]) / d[1]
        px, pz = ox + tt * d[0], oz + tt * d[2]
        top = (tt > 0) & (px**2 + pz**2 <= r**2) & (tt < t) & (o[1] > c[1] + h)
        t = np.where(top, tt, t)
        hx, hz = ox + t * d[0], oz + t * d[2]
        with np.errstate(invalid="ignore"):
            normal[0], normal[2] = np.where(top, 0, hx / r), np.where(top, 0, hz / r)
        normal[1] = np.where(top, 1.0, 0.0)
        return t, normal
    r = part.size[0] * scale  # sphere
    oc = o - c
    b = oc @ d
    a = (d * d).sum(0)
    cc = oc @ oc - r * r
    disc = b * b - a * cc
    with np.errstate(invalid="ignore"):
        ts = (-b - np.sqrt(disc)) / a
    hit = (disc >= 0) & (ts > 0)
    t = np.where(hit, ts, np.inf)
    with np.errstate(invalid="ignore"):
        normal = (oc[:, None] + t * d) / r
    return t, normal


def _render(seed, index, width, height, cam: Camera, placed, rng: np.random.Generator, config: SceneConfig,
            wall: float | None = None, slope: tuple[float, float] = (0.0, 0.0)) -> Scene:
    ux, vy = _rays(width, height, cam.fx, cam.fy, cam.cx, cam.cy)
    rot = cam.rotation
    # World-space directions (z_cam = 1 keeps the ray parameter equal to camera-space depth).
    dwy = rot[1, 1] * vy + rot[1, 2]
    dwz = rot[2, 1] * vy + rot[2, 2]
    depth = np.full((height, width), np.inf)
    with np.errstate(divide="ignore"):
        # The ground Y = slope_x X + slope_z Z meets the ray (0, height, 0) + t (ux, dwy, dwz) at
        # t = height / (slope_x ux + slope_z dwz - dwy), where that is positive.
        rise = slope[0] * ux + slope[1] * dwz - dwy
        tg = np.where(rise > 0, cam.height / np.where(rise > 0, rise, 1), np.inf)
    gx, gz = ux * tg, dwz * tg
    ground = np.isfinite(tg) & (np.hypot(gx, gz) <= config.max_ground_distance)
    if wall is not None:  # a vertical wall across the view at world Z = wall hides the far ground and the sky
        with np.errstate(divide="ignore"):
            tw = np.where(dwz > 0, wall / np.where(dwz > 0, dwz, 1), np.inf)
        ground &= tg < tw
        walled = ~ground & np.isfinite(tw)
        depth[walled] = tw[walled]
    depth[ground] = tg[ground]

    # Sky gradient, checkered ground with distance fog: enough texture for a detector to look at.
    sky_t = np.clip(vy[:, :1] * 2 + 0.5, 0, 1).astype(np.float32)[..., None]  # (H, 1, 1)
    sky = np.array([120, 170, 235], np.float32) * (1 - sky_t) + np.array([200, 220, 245], np.float32) * sky_t
    ground_color = np.array(rng.choice([[110, 120, 90], [140, 130, 115], [95, 100, 105]]), np.float32)
    with np.errstate(invalid="ignore"):
        check = ((np.floor(gx) + np.floor(gz)) % 2 == 0).astype(np.float32)
    fog = np.clip(np.where(ground, tg, 0) / config.max_ground_distance, 0, 1).astype(np.float32)[..., None]
    gcol = ground_color * (0.85 + 0.15 * check[..., None])
    gcol = gcol * (1 - fog) + np.array([200, 210, 225], np.float32) * fog
    image = np.where(ground[..., None], gcol, sky).astype(np.float32)
    if wall is not None:  # plastered bricks: rows and staggered joints, a color per scene
        wy = cam.height + dwy * np.where(walled, tw, 0)
        wx = ux * np.where(walled, tw, 0)
        row = np.floor(wy / 0.25)
        joint = ((np.abs((wy / 0.25) % 1 - 0.5) > 0.45) | (np.abs(((wx + 0.25 * (row % 2)) / 0.5) % 1 - 0.5) > 0.45))
        wall_color = np.array(rng.choice([[170, 150, 130], [190, 185, 175], [150, 95, 80]]), np.float32)
        wcol = wall_color * np.where(joint, 0.75, 1.0)[..., None]
        image = np.where(walled[..., None], wcol, image).astype(np.float32)

    instances = np.full((height, width), -1, np.int16)
    objects: list[SceneObject] = []
    for obj, cat, orot, uv in placed:
        x0, x1 = max(0, int(math.floor(uv[:, 0].min()))), min(width, int(math.ceil(uv[:, 0].max())))
        y0, y1 = max(0, int(math.floor(uv[:, 1].min()))), min(height, int(math.ceil(uv[:, 1].max())))
        objects.append(obj)
        if x1 <= x0 or y1 <= y0:
            continue
        sub_u, sub_v = ux[y0:y1, x0:x1].ravel(), vy[y0:y1, x0:x1].ravel()
        d_cam = np.stack([sub_u, sub_v, np.ones_like(sub_u)])
        d_loc = orot.T @ (rot @ d_cam)  # camera -> world -> object
        o_loc = orot.T @ (cam.center - obj.position)
        t_best = np.full(sub_u.shape, np.inf)
        n_best = np.zeros((3, sub_u.size))
        part_best = np.full(sub_u.shape, -1)
        for k, part in enumerate(cat.parts):
            t, n = _hit_part(part, obj.scale, o_loc, d_loc)
            better = t < t_best
            t_best = np.where(better, t, t_best)
            n_best[:, better] = n[:, better]
            part_best[better] = k
        own = np.isfinite(t_best)
        obj.own_pixels = int(own.sum())
        if not obj.own_pixels:
            continue
        win_depth = depth[y0:y1, x0:x1].reshape(-1)
        front = own & (t_best < win_depth)
        # Shading: Lambert in world space, per-part brightness, stripes along the local height.
        n_world = orot @ n_best
        lam = np.clip(_LIGHT @ n_world, 0, 1)
        p_loc = o_loc[:, None] + np.where(own, t_best, 0) * d_loc
        crng = scene_rng(seed, index, f"color{obj.instance}")
        color = _CLOTHES[int(crng.integers(len(_CLOTHES)))] if obj.category == PERSON else cat.color
        base = np.array(color, np.float32) * (0.85 + 0.3 * crng.random())
        shade = np.array([p.shade for p in cat.parts] + [1.0])[part_best]
        colors = np.array([p.color or base for p in cat.parts] + [base], np.float32)[part_best]
        stripes = 1.0 + 0.08 * np.sin(p_loc[1] * 40.0 / obj.scale)
        if obj.category == PERSON:
            # Dark hair on the back of the head makes the facing visible in the image.
            head = part_best == 2
            back = head & (p_loc[2] < 0.02)
            shade = np.where(back, 0.25, shade)
        col = colors * (shade * stripes * (0.35 + 0.65 * lam))[:, None]
        win_img = image[y0:y1, x0:x1].reshape(-1, 3)
        win_img[front] = np.clip(col[front], 0, 255)
        image[y0:y1, x0:x1] = win_img.reshape(y1 - y0, x1 - x0, 3)
        win_depth[front] = t_best[front]
        depth[y0:y1, x0:x1] = win_depth.reshape(y1 - y0, x1 - x0)
        win_inst = instances[y0:y1, x0:x1].reshape(-1)
        win_inst[front] = obj.instance
        instances[y0:y1, x0:x1] = win_inst.reshape(y1 - y0, x1 - x0)
        obj._window = (x0, y0, x1, y1)  # type: ignore[attr-defined]

    # Visible boxes from the final instance map (occlusion by later solids handled).
    for obj in objects:
        window = getattr(obj, "_window", None)
        if window is None:
            continue
        x0, y0, x1, y1 = window
        mask = instances[y0:y1, x0:x1] == obj.instance
        obj.visible_pixels = int(mask.sum())
        if obj.visible_pixels:
            cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
            obj.box = (float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1))
        obj.annotated = bool(
            obj.visible_pixels >= config.min_visible_pixels and obj.visible_fraction >= config.min_visible_fraction
        )
        del obj._window  # type: ignore[attr-defined]
        if obj.category == PERSON:
            lean = None
            if config.torso_lean_deg[1] > 0 or config.side_lean_deg > 0:  # its own draws: other scenes keep theirs
                lean_rng = scene_rng(seed, index, f"lean/{obj.instance}")
                lean = (math.radians(lean_rng.uniform(*config.torso_lean_deg)),
                        math.radians(lean_rng.uniform(-config.side_lean_deg, config.side_lean_deg)))
            obj.keypoints = _keypoints(obj, cam, instances, width, height, lean)

    depth_m = np.where(np.isfinite(depth), depth, SKY).astype(np.float32)
    noise = scene_rng(seed, index, "grain").normal(0, 3.0, (height, width, 1)).astype(np.float32)
    rgb = np.clip(image + noise, 0, 255).astype(np.uint8)
    return Scene(seed, index, width, height, cam, rgb, depth_m, instances, objects, wall=wall, ground_slope=slope)


def _leaning(joints: np.ndarray, forward: float, side: float) -> np.ndarray:
    """``joints`` (``_JOINTS``' person frame) with the upper body (head, shoulders, arms) tilted about
    the hip axis ``forward`` radians toward the person's front (+z), then ``side`` radians to a side."""
    out = joints.copy()
    up = out[:, 1] > _HIP_HEIGHT
    up[7:11] = True  # elbows and wrists go with the shoulders
    y, z = out[up, 1] - _HIP_HEIGHT, out[up, 2]
    y, z = y * math.cos(forward) - z * math.sin(forward), y * math.sin(forward) + z * math.cos(forward)
    x = out[up, 0]
    out[up, 0] = x * math.cos(side) - y * math.sin(side)
    out[up, 1] = _HIP_HEIGHT + x * math.sin(side) + y * math.cos(side)
    out[up, 2] = z
    return out


def _keypoints(obj: SceneObject, cam: Camera, instances: np.ndarray, width: int, height: int,
               lean: tuple[float, float] | None = None) -> np.ndarray:
    """COCO ``(17, 3)`` keypoints ``(x, y, v)``: v=2 visible, 1 labeled but occluded, 0 unlabeled.

    ``lean``: ``(forward, side)`` radians the upper body leans (:attr:`SceneConfig.torso_lean_deg`);
    a keypoint is then placed on the leaning body and seen where the upright body is."""
    rot = _yaw_matrix(obj.yaw)
    upright = (_JOINTS * obj.scale) @ rot.T + obj.position
    world = upright if lean is None else (_leaning(_JOINTS, *lean) * obj.scale) @ rot.T + obj.position
    cam_pts = cam.world_to_camera(world)
    uv = cam.project(cam_pts)
    seen_at = uv if lean is None else cam.project(cam.world_to_camera(upright))
    to_cam = cam.center - world
    out = np.zeros((17, 3), np.float32)
    for k in range(17):
        u, v = uv[k]
        if not (0 <= u < width and 0 <= v < height) or cam_pts[k, 2] <= 0:
            continue
        if k in _FACE_NORMALS and float((rot @ np.array(_FACE_NORMALS[k], float)) @ to_cam[k]) <= 0:
            continue  # the face (or this ear) looks away from the camera: annotators leave it out
        su, sv = seen_at[k]
        seen = 0 <= su < width and 0 <= sv < height and instances[int(sv), int(su)] == obj.instance
        out[k] = (u, v, 2 if seen else 1)
    return out


def make_scenes(
    n: int, seed: int = 0, width: int = 320, height: int = 240, config: SceneConfig = DEFAULT_CONFIG
) -> list[Scene]:
    """Scenes ``0 .. n-1`` of the family ``seed``."""
    return [make_scene(seed, i, width, height, config) for i in range(n)]


# ------------------------------------------------------------------ monocular-like depth errors
def corrupt_depth(
    depth: np.ndarray,
    instances: np.ndarray | None,
    rng: np.random.Generator,
    object_bias: float = 0.1,
    blur_sigma: float = 1.5,
    noise: float = 0.01,
    kind: str = "inverse_depth",
    shift: tuple[float, float] = (0.0, 0.2),
    scale: tuple[float, float] = (0.3, 3.0),
) -> np.ndarray:
    """Err the way monocular depth models do; returns relative inverse depth (larger = nearer).

    * per-object multiplicative bias on depth, ``exp(N(0, object_bias))`` per instance;
    * blurred edges: gaussian blur (``blur_sigma`` pixels) on inverse depth mixes objects with
      what is behind them near their silhouettes;
    * multiplicative noise ``N(1, noise)`` per pixel;
    * an unknown global scale (a factor in ``scale``, log-uniform) and shift in inverse depth (what
      relative models leave open); the shift is a share in ``shift`` of the largest inverse depth,
      of either sign (a negative shift puts the far end below zero).

    Sky (depth ``0``) becomes inverse depth ``0`` before the shift, so it is the farthest thing.
    ``kind="depth"`` converts back to (affine-wrong, positive) depth, larger = farther.
    """
    d = np.asarray(depth, np.float64)
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
    if instances is not None and object_bias > 0:
        ids = np.unique(instances[instances >= 0])
        factors = np.ones(int(ids.max()) + 2 if ids.size else 1)
        if ids.size:
            factors[ids] = np.exp(rng.normal(0.0, object_bias, ids.size))
        inv = inv / factors[np.where(instances >= 0, instances, -1)]  # index -1 is the last entry: 1.0
    if blur_sigma > 0:
        inv = gaussian_blur(inv, blur_sigma)
    if noise > 0:
        inv = inv * rng.normal(1.0, noise, inv.shape).clip(0.5, 1.5)
    scale = math.exp(rng.uniform(math.log(scale[0]), math.log(scale[1])))
    offset = rng.uniform(*shift) * float(inv.max() if inv.size else 0.0)
    inv = scale * inv + scale * offset
    if kind == "inverse_depth":
        return inv.astype(np.float32)
    if kind == "depth":
        return (1.0 / np.maximum(inv, 1.0 / MAX_MODEL_DEPTH)).astype(np.float32)
    raise ValueError(f"kind must be 'inverse_depth' or 'depth', got {kind!r}")


MAX_MODEL_DEPTH = 1000.0
"""Meters a depth model's output reads at most (the sky, and what blurs into it): models cap their range."""


def sensor_depth(scene: Scene, noise: SensorNoise, rng: np.random.Generator) -> np.ndarray:
    """Meters as a structured-light sensor measures ``scene`` (0 = no measurement), from its geometry:

    * the projector's shadow: beside every silhouette, on the side away from the projector (the
      left), the farther surface gets no measurement over ``f * baseline * (1/z_near - 1/z_far)``
      pixels;
    * flying pixels: at a jump of over 10 % between neighbours, the farther pixel reads a mix of the
      two surfaces (with chance ``mixed``; uniform between 20 and 80 % of the way);
    * axial noise growing with the square of the distance, then disparity quantized to
      ``1 / subpixel`` of a pixel of the sensor (focal length ``focal``);
    * millimeters, as the 16-bit files store them; nothing where the noisy depth is beyond
      ``max_range`` (flying pixels in front of a far background can still read).
    """
    z = np.asarray(scene.depth, np.float64)
    seen = z > 0
    out = z.copy()
    f = scene.camera.fx
    # the projector's shadow: to the left of a near surface, the far one it hides from the projector
    shadow = np.zeros_like(seen)
    far, near = z[:, :-1], z[:, 1:]
    edge = seen[:, 1:] & seen[:, :-1] & (far > 1.1 * near)
    safe_near, safe_far = np.where(edge, near, 1.0), np.where(edge, far, 1.0)
    width = np.where(edge, f * noise.baseline * (1.0 / safe_near - 1.0 / safe_far), 0.0)
    rows, cols = np.nonzero(width > 0)
    for k in range(int(np.ceil(width.max())) if len(rows) else 0):
        hit = (width[rows, cols] > k) & (cols >= k)
        r, c = rows[hit], cols[hit] - k
        behind = z[r, c] > 1.1 * near[rows[hit], cols[hit]]  # a thinner near object there is lit
        shadow[r[behind], c[behind]] = True
    for axis in (0, 1):
        a, o, v = np.moveaxis(z, axis, 0), np.moveaxis(out, axis, 0), np.moveaxis(seen, axis, 0)
        jump = v[1:] & v[:-1] & (np.abs(a[1:] - a[:-1]) > 0.1 * np.minimum(a[1:], a[:-1]))
        mix = rng.uniform(0.2, 0.8, jump.shape)
        fly = jump & (rng.random(jump.shape) < noise.mixed)
        lo, hi = np.minimum(a[1:], a[:-1]), np.maximum(a[1:], a[:-1])
        value = hi - mix * (hi - lo)
        first = fly & (a[:-1] > a[1:])
        second = fly & (a[1:] > a[:-1])
        o[:-1][first] = value[first]
        o[1:][second] = value[second]
    out = out + rng.normal(0.0, 1.0, out.shape) * (noise.sigma[0] + noise.sigma[1] * (out - 0.4) ** 2)
    seen &= (out > 0) & (out < noise.max_range)
    if noise.subpixel > 0 and noise.baseline > 0:
        fb, step = noise.focal * noise.baseline, 1.0 / noise.subpixel
        out = fb / np.maximum(np.round(fb / np.maximum(out, 1e-3) / step) * step, step)
    out = np.where(seen & ~shadow & (out < 65.535), np.round(out * 1000.0) / 1000.0, 0.0)
    return out.astype(np.float32)


def observed_depth(scene: Scene, noise: DepthNoise | SensorNoise | None, seed: int | None = None) -> np.ndarray:
    """The scene's exact depth (``noise`` None), a sensor's meters (:class:`SensorNoise`), its
    monocular-like relative inverse depth, or (``noise.metric``) a metric model's meters."""
    if noise is None:
        return scene.depth
    if isinstance(noise, SensorNoise):
        return sensor_depth(scene, noise, scene_rng(scene.seed if seed is None else seed, scene.index, "sensor"))
    rng = scene_rng(scene.seed if seed is None else seed, scene.index, "corrupt")
    if noise.metric:
        s = math.exp(noise.scale_error)
        return corrupt_depth(scene.depth, scene.instances, rng, object_bias=noise.object_bias, blur_sigma=noise.blur_sigma,
                             noise=noise.noise, kind="depth", shift=(0.0, 0.0), scale=(1.0 / s, s))
    return corrupt_depth(scene.depth, scene.instances, rng, object_bias=noise.object_bias, blur_sigma=noise.blur_sigma,
                         noise=noise.noise, shift=noise.shift)


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable gaussian blur with edge padding, numpy only."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    out = np.asarray(a, np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        p = np.pad(out, pad, mode="edge")
        acc = np.zeros_like(out)
        n = out.shape[axis]
        for i, w in enumerate(k):
            acc += w * (p[i : i + n] if axis == 0 else p[:, i : i + n])
        out = acc
    return out


# ------------------------------------------------------------------ Objects365 layout
@dataclass(frozen=True)
class LayoutPaths:
    """Where :func:`write_objects365_layout` put things."""

    root: Path
    images: Path  # root/images: give this as the objects365 image directory
    annotations: Path  # COCO-style JSON
    depth: Path  # one float32 .npy (meters, 0 = hole) per image, named by file stem
    truth: Path


def write_objects365_layout(
    scenes: Sequence[Scene],
    root: str | Path,
    images_per_patch: int = 50,
    jpeg_quality: int = 92,
    split: str = "train",
    noise: AnnotationNoise = EXACT_ANNOTATIONS,
    annotations_name: str | None = None,
    write_files: bool = True,
) -> LayoutPaths:
    """Write scenes as an Objects365 v2 download: JPEGs, COCO-style JSON, depth .npy, truth.

    Layout::

        root/images/train/patch0/objects365_v2_00000001.jpg   (images_per_patch per folder)
        root/annotations/zhiyuan_objv2_train.json              (images, annotations, categories)
        root/depth/objects365_v2_00000001.npy                  (float32 meters, 0 = sky)
        root/truth.json                                        (per image, per object truth)

    Only annotated objects (visible enough, see :class:`SceneConfig`) are in the JSON; the truth
    file lists every object with ``annotated`` flags. ``file_name`` follows the released JSON
    (``images/v2/patchN/<stem>.jpg``), which differs from the download's ``train/`` folder, as there.
    ``noise`` makes the JSON's boxes and keypoints detector-like (:class:`AnnotationNoise`);
    ``annotations_name`` names the JSON; ``write_files=False`` writes only the JSON and the truth
    (a second annotation file beside images and depth already written).
    """
    from PIL import Image

    root = Path(root)
    name = annotations_name or f"zhiyuan_objv2_{split}.json"
    paths = LayoutPaths(root, root / "images", root / "annotations" / name, root / "depth", root / "truth.json")
    paths.depth.mkdir(parents=True, exist_ok=True)
    paths.annotations.parent.mkdir(parents=True, exist_ok=True)
    from ..perception.objects365_labels import OBJECTS365_CATEGORIES

    # The real Objects365 v2 ids (id = index + 1), so a user's label maps work on these files too.
    cat_ids = {name: OBJECTS365_CATEGORIES.index(name) + 1 for name in CATEGORIES}
    images, annotations, truth = [], [], {}
    ann_id = 1
    for scene in scenes:
        number = scene.index + 1
        patch = scene.index // images_per_patch
        stem = scene.image_id
        if write_files:
            folder = paths.images / split / f"patch{patch}"
            folder.mkdir(parents=True, exist_ok=True)
            exif = Image.Exif()
            if scene.focal_35mm is not None:
                exif.get_ifd(0x8769)[0xA405] = scene.focal_35mm  # Exif IFD: FocalLengthIn35mmFilm
            Image.fromarray(scene.image).save(folder / f"{stem}.jpg", quality=jpeg_quality, exif=exif)
            np.save(paths.depth / f"{stem}.npy", scene.depth)
        images.append({"id": number, "file_name": f"images/v2/patch{patch}/{stem}.jpg", "width": scene.width, "height": scene.height})
        t = scene.truth()
        seen_boxes, seen_kps = scene.observed(noise)
        seen = 0
        for obj, item in zip(scene.objects, t["objects"]):
            if not obj.annotated:
                continue
            x1, y1, x2, y2 = seen_boxes[seen].tolist()
            kp = seen_kps[seen] if obj.keypoints is not None else None
            seen += 1
            ann = {
                "id": ann_id,
                "image_id": number,
                "category_id": cat_ids[obj.category],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float(obj.visible_pixels),
                "iscrowd": 0,
            }
            if kp is not None:
                ann["keypoints"] = [round(float(v), 2) for v in kp.reshape(-1)]
                ann["num_keypoints"] = int((kp[:, 2] > 0).sum())
            annotations.append(ann)
            item["annotation_id"] = ann_id
            ann_id += 1
        truth[stem] = t
    categories = []
    for name, cid in cat_ids.items():
        cat = {"id": cid, "name": name, "supercategory": "synthetic"}
        if name == PERSON:
            cat.update(keypoints=list(COCO_KEYPOINTS), skeleton=COCO_SKELETON)
        categories.append(cat)
    coco = {"info": {"description": "SpatialForge synthetic scenes (Objects365 v2 layout)"}, "images": images, "annotations": annotations, "categories": categories, "licenses": []}
    paths.annotations.write_text(json.dumps(coco))
    if write_files:
        paths.truth.write_text(json.dumps({"images": truth}))
    return paths


def load_truth(path: str | Path) -> dict[str, dict[str, Any]]:
    """``image_id -> truth`` from a ``truth.json`` written by :func:`write_objects365_layout`."""
    return json.loads(Path(path).read_text())["images"]


def truth_of(scenes: Iterable[Scene]) -> dict[str, dict[str, Any]]:
    """``image_id -> truth`` straight from scenes (no files)."""
    return {s.image_id: s.truth() for s in scenes}


def scene_record(scene: Scene, source: str = "objects365", depth: np.ndarray | None = None, depth_kind: str = "depth",
                 noise: AnnotationNoise = EXACT_ANNOTATIONS, metric: bool = False, measured: bool = False):
    """A pipeline :class:`~spatialforge.processing.records.Record` of the scene's annotated objects.

    ``depth`` defaults to the exact metric depth (holes where the sky is); pass a corrupted map and
    ``depth_kind="inverse_depth"`` to feed a monocular-like signal instead (``metric=True``: a
    metric model's meters, :attr:`DepthMap.estimated`; ``measured=True``: a sensor's meters, as
    :func:`sensor_depth` gives them); ``noise`` observes the boxes and keypoints
    as a detector and a pose model would (:meth:`Scene.observed`).
    """
    from ..records import DepthMap, Detections, Record

    annotated = scene.annotated
    boxes, kps = scene.observed(noise)
    det = Detections(
        xyxy=boxes,
        labels=[o.category for o in annotated],  # as the COCO reader gives them
        keypoints=kps,
    )
    values = scene.depth if depth is None else depth
    if depth is None:
        dm = DepthMap(values, kind="depth", valid=values > 0, source="file:depth", metric=True)
    elif measured:
        dm = DepthMap(values, kind="depth", valid=values > 0, source="synthetic:sensor", metric=True)
    elif metric:
        dm = DepthMap(values, kind=depth_kind, valid=values > 0, source=f"synthetic:model:{depth_kind}", metric=True, estimated=True)
    else:
        dm = DepthMap(values, kind=depth_kind, source=f"synthetic:corrupted:{depth_kind}", metric=False)
    record = Record(source=source, image_id=scene.image_id, width=scene.width, height=scene.height, objects=det, depth=dm)
    if scene.focal_35mm is not None:  # what the readers take from the EXIF the layout writes
        record.meta["focal_px"] = scene.focal_35mm / math.hypot(36.0, 24.0) * math.hypot(scene.width, scene.height)
        record.meta["focal_source"] = "exif:FocalLengthIn35mmFilm"
    return record


def variant_record(scene: Scene, variant: Variant, source: str = "objects365", detector: bool = False):
    """:func:`scene_record` of ``scene`` as ``variant`` observes it (boxes, keypoints, depth);
    ``detector``: with :func:`detector_objects` beside the annotations (the record's boxes where it
    has no annotated one), as :func:`variant_detector` says the variant's detector sees the scene."""
    if variant.depth is None:
        record = scene_record(scene, source, noise=variant.annotations)
    elif variant.measured:
        record = scene_record(scene, source, depth=observed_depth(scene, variant.depth), noise=variant.annotations,
                              measured=True)
    else:
        metric = variant.depth.metric
        record = scene_record(scene, source, depth=observed_depth(scene, variant.depth),
                              depth_kind="depth" if metric else "inverse_depth", noise=variant.annotations, metric=metric)
    if detector:
        from ..perception.detection import attach_result
        from ..pipeline import GenerateConfig

        # As `generate --detections` attaches them: beside the annotations, or as the boxes of an
        # image the annotations have none for (then at the default --detector-threshold).
        found = detector_objects(scene, variant_detector(variant))
        attach_result(record, {"boxes": found.xyxy, "scores": found.scores, "text_labels": found.labels}, "file:detector",
                      threshold=GenerateConfig.__dataclass_fields__["detector_threshold"].default, beside=True)
    return record


@dataclass(frozen=True)
class DetectorNoise:
    """How a detector run beside the annotations sees a scene (see :func:`detector_objects`).

    An instance showing ``p`` pixels, ``f`` of its own silhouette unoccluded, is found with chance
    ``min(1, p / recall_pixels) * (1 - occlusion_miss * (1 - f))`` (``recall_pixels`` 0: every
    visible instance is found) and scored ``score_floor + (1 - score_floor) * min(1, p /
    score_pixels) * (0.4 + 0.6 f)`` (``score_pixels`` 0: score 1), so small and occluded instances
    are missed more often and found with lower scores; each box edge moves by up to ``box_jitter``
    of the box size. ``confusions``: chance per found instance of a second box on it with the label
    of another category (scored ``confusion_score``), as detectors confuse look-alikes.
    ``min_pixels``: instances showing fewer pixels are never found.
    """

    recall_pixels: float = 0.0
    min_pixels: int = 0
    occlusion_miss: float = 0.0
    score_pixels: float = 0.0
    score_floor: float = 0.2
    box_jitter: float = 0.0
    confusions: float = 0.0
    confusion_score: tuple[float, float] = (0.3, 0.6)

    @property
    def exact(self) -> bool:
        return self.recall_pixels == 0 and self.score_pixels == 0 and self.box_jitter == 0 and self.confusions == 0


EXACT_DETECTOR = DetectorNoise(min_pixels=MIN_VISIBLE_PIXELS)
"""Finds every instance the image shows (at least the truth's ``MIN_VISIBLE_PIXELS``: what can be
made out), with its exact box, score 1, nothing else."""
DETECTOR_LIKE_DETECTOR = DetectorNoise(recall_pixels=100.0, occlusion_miss=0.1, score_pixels=300.0,
                                       box_jitter=0.06, confusions=0.05)
"""Misses small and occluded instances more often and scores them lower (a 60-pixel sliver of a
mostly hidden cup: about 0.3), boxes off by up to 6 % of their size per edge, one found instance
in twenty also boxed as another category."""


def variant_detector(variant: Variant) -> DetectorNoise:
    """The detector a variant runs beside its annotations: exact where its boxes are exact."""
    return EXACT_DETECTOR if variant.annotations.box_jitter == 0 else DETECTOR_LIKE_DETECTOR


def detector_objects(scene: Scene, detector: DetectorNoise = DETECTOR_LIKE_DETECTOR):
    """What a detector run beside the annotations finds (:class:`DetectorNoise`): instances the
    image shows, also those the annotations leave out, and some boxes of a wrong label.
    Deterministic per scene."""
    from ..records import Detections

    rng = scene_rng(scene.seed, scene.index, "detector")
    names = sorted(CATEGORIES)
    boxes, labels, scores = [], [], []
    limit = np.array([scene.width, scene.height] * 2, float)

    def jittered(box) -> np.ndarray:
        x1, y1, x2, y2 = box
        w, h = x2 - x1, y2 - y1
        b = np.array([x1, y1, x2, y2]) + rng.uniform(-detector.box_jitter, detector.box_jitter, 4) * np.array([w, h, w, h])
        return np.clip([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])], 0, limit)

    for o in scene.objects:
        if o.box is None or not o.visible_pixels:
            continue
        px, f = o.visible_pixels, o.visible_fraction
        if px < detector.min_pixels:
            continue
        chance = 1.0 if detector.recall_pixels == 0 else min(1.0, px / detector.recall_pixels)
        chance *= 1.0 - detector.occlusion_miss * (1.0 - f)
        found, draws = rng.random(), rng.random(3)
        if found >= chance:
            continue
        boxes.append(jittered(o.box))
        labels.append(o.category)
        if detector.score_pixels == 0:
            scores.append(1.0)
        else:
            floor = detector.score_floor
            scores.append(floor + (1.0 - floor) * min(1.0, px / detector.score_pixels) * (0.4 + 0.6 * f))
        if draws[0] < detector.confusions:
            boxes.append(jittered(o.box))
            labels.append(names[(names.index(o.category) + 1 + int(draws[1] * (len(names) - 1))) % len(names)])
            lo, hi = detector.confusion_score
            scores.append(lo + (hi - lo) * draws[2])
    return Detections(np.array(boxes, float).reshape(-1, 4), labels, scores=np.array(scores, np.float32))


def detection_results(scenes: Iterable[Scene], detector: DetectorNoise = DETECTOR_LIKE_DETECTOR) -> list[dict[str, Any]]:
    """:func:`detector_objects` of every scene in the COCO detection-results format, with the image
    and category ids :func:`write_objects365_layout` writes (``bbox`` ``[x, y, w, h]``)."""
    from ..perception.objects365_labels import OBJECTS365_CATEGORIES

    out = []
    for scene in scenes:
        det = detector_objects(scene, detector)
        for box, label, score in zip(det.xyxy.tolist(), det.labels, det.scores.tolist()):
            x1, y1, x2, y2 = (round(v, 2) for v in box)
            out.append({"image_id": scene.index + 1, "category_id": OBJECTS365_CATEGORIES.index(label) + 1,
                        "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)], "score": round(score, 4)})
    return out
