"""Facing direction from COCO keypoints: hand-made bodies whose facing is known."""

import numpy as np
import pytest

from spatialforge.processing.perception.facing import FacingFromKeypoints, facing_from_keypoints, keypoint_scores
from spatialforge.processing.records import Detections, Record


def body(
    shoulder_sep: float = 20.0,
    hip_sep: float = 14.0,
    face: float = 0.9,
    score: float = 0.9,
    cx: float = 50.0,
) -> np.ndarray:
    """Keypoints of an upright person: shoulders at y=40, hips at y=80 (torso length 40).

    ``shoulder_sep`` / ``hip_sep`` are ``x_left - x_right`` (positive: facing the camera).
    """
    kp = np.full((17, 3), np.nan, np.float32)
    kp[:, 2] = 0.0
    kp[0] = [cx, 20, face]  # nose
    kp[1] = [cx + 4, 17, face]  # left eye (on the image's right when facing the camera)
    kp[2] = [cx - 4, 17, face]
    kp[5] = [cx + shoulder_sep / 2, 40, score]
    kp[6] = [cx - shoulder_sep / 2, 40, score]
    kp[11] = [cx + hip_sep / 2, 80, score]
    kp[12] = [cx - hip_sep / 2, 80, score]
    return kp


@pytest.mark.parametrize(
    "kp, expected",
    [
        (body(), "toward_camera"),
        (body(-20, -14, face=0.05), "away_from_camera"),
        (body(2, 1), "sideways"),
        (body(-3, -1, face=0.05), "sideways"),
        (body(20, 14, face=0.0), "toward_camera"),  # no face: still toward, less sure
        (body(-20, -14, face=0.9), "away_from_camera"),  # looking back over the shoulder
    ],
)
def test_facing_rules(kp, expected):
    facing, confidence = facing_from_keypoints(kp)
    assert facing == expected
    assert 0.0 < confidence <= 1.0


def test_left_shoulder_on_image_right_means_toward_camera():
    kp = body(20, 14)
    assert kp[5, 0] > kp[6, 0]
    assert facing_from_keypoints(kp)[0] == "toward_camera"
    mirrored = kp.copy()
    mirrored[:, 0] = 100 - mirrored[:, 0]  # the same body seen from behind
    mirrored[[0, 1, 2], 2] = 0.0  # no face from behind
    assert facing_from_keypoints(mirrored)[0] == "away_from_camera"


def test_missing_keypoints_are_unknown():
    assert facing_from_keypoints(np.full((17, 3), np.nan)) == ("unknown", 0.0)
    kp = body()
    kp[[11, 12], 2] = 0.0  # no hips: no torso length to compare the shoulders with
    assert facing_from_keypoints(kp) == ("unknown", 0.0)
    kp = body()
    kp[[5, 6, 11, 12]] = np.nan
    assert facing_from_keypoints(kp) == ("unknown", 0.0)
    kp = body(score=0.1)  # below min_score
    assert facing_from_keypoints(kp, min_score=0.3) == ("unknown", 0.0)


def test_shoulders_alone_with_one_hip_give_a_torso():
    kp = body()
    kp[12, 2] = 0.0
    assert facing_from_keypoints(kp)[0] == "toward_camera"


def test_confidence_grows_with_separation_scores_and_face():
    wide, narrow = facing_from_keypoints(body(30, 20))[1], facing_from_keypoints(body(14, 9))[1]
    assert wide > narrow
    sure, unsure = facing_from_keypoints(body(score=1.0))[1], facing_from_keypoints(body(score=0.5))[1]
    assert sure == pytest.approx(2 * unsure)
    with_face, without = facing_from_keypoints(body(face=1.0))[1], facing_from_keypoints(body(face=0.0))[1]
    assert with_face > without
    back, back_face = facing_from_keypoints(body(-30, -20, face=0.0))[1], facing_from_keypoints(body(-30, -20, face=1.0))[1]
    assert back_face == pytest.approx(back / 2)
    edge_on, slightly = facing_from_keypoints(body(0, 0))[1], facing_from_keypoints(body(6, 4))[1]
    assert edge_on > slightly  # sideways confidence is highest when perfectly edge-on


def test_twisted_body_is_less_confident():
    straight = facing_from_keypoints(body(30, 20))[1]
    twisted = facing_from_keypoints(body(30, -8))
    assert twisted[0] == "toward_camera" and twisted[1] < straight


def test_coco_visibility_flags():
    kp = body(score=2.0, face=2.0)
    assert keypoint_scores(kp)[5] == 1.0
    kp[6, 2] = 1.0  # labelled but occluded: half score, still above 0.3
    assert keypoint_scores(kp)[6] == 0.5
    assert facing_from_keypoints(kp)[0] == "toward_camera"


def test_bad_shape():
    with pytest.raises(ValueError, match=r"\(17, 3\)"):
        facing_from_keypoints(np.zeros((16, 3)))


def test_step_fills_person_boxes_only():
    kps = np.stack([body(), body(-20, -14, face=0.0), body(), np.full((17, 3), np.nan, np.float32)])
    det = Detections(
        xyxy=np.array([[30, 10, 70, 100]] * 4, float),
        labels=["person", "Person", "cup", "person"],
        keypoints=kps,
        facing=["unknown", "unknown", "unknown", "sideways"],
    )
    record = Record("s", "1", 100, 120, objects=det)
    out = FacingFromKeypoints().process(record)
    assert out.objects.facing == ["toward_camera", "away_from_camera", "unknown", "sideways"]
    conf = out.objects.facing_confidence
    assert conf[0] > 0.5 and conf[1] > 0.5 and conf[2] == 0.0 and conf[3] == 0.0
