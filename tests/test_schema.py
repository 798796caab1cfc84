import pytest

from spatialforge.builders.schema import FEATURES, TASKS, denormalize_bbox, normalize_bbox, validate_row


@pytest.mark.parametrize(
    ("xyxy", "size", "want"),
    [
        ([10, 20, 110, 220], (200, 400), [50, 50, 550, 550]),
        ([-5, -5, 250, 500], (200, 400), [0, 0, 1000, 1000]),  # clamped
        ([0.4, 0, 0.6, 1], (1000, 1000), [0, 0, 1, 1]),  # sub-unit boxes round, never vanish into negatives
        ([333, 0, 667, 1], (1000, 3), [333, 0, 667, 333]),
    ],
)
def test_normalize_bbox(xyxy, size, want):
    assert normalize_bbox(xyxy, *size) == want


@pytest.mark.parametrize("bad", [[5, 0, 4, 1], [0, 0, float("nan"), 1], [0, 0, 1]])
def test_normalize_bbox_rejects(bad):
    with pytest.raises(ValueError, match="bbox"):
        normalize_bbox(bad, 10, 10)


def test_denormalize_roundtrip_within_half_unit():
    box = normalize_bbox([13, 27, 171, 390], 640, 480)
    back = denormalize_bbox(box, 640, 480)
    assert all(abs(a - b) <= 0.5 * s / 1000 for a, b, s in zip(back, [13, 27, 171, 390], [640, 480, 640, 480]))


def _row(**kw):
    row = {
        "id": "x", "source": "objects365", "image_id": "a", "width": 10, "height": 10, "task": "near_far",
        "question": "q", "answer": "a",
        "objects": [{"label": "cup", "bbox": [0, 0, 10, 10]}, {"label": "dog", "bbox": [5, 5, 20, 20]}],
        "fact": {"subject": 0, "predicate": "nearer_than", "object": 1, "frame": "camera"},
        "count": None, "verification": None,
    }
    row.update(kw)
    return row


def test_validate_row_accepts_and_rejects():
    validate_row(_row())
    with pytest.raises(ValueError, match="fact.object=2"):
        validate_row(_row(fact={"subject": 0, "predicate": "nearer_than", "object": 2, "frame": "camera"}))
    with pytest.raises(ValueError, match="frame 'person'"):
        validate_row(_row(task="perspective"))
    with pytest.raises(ValueError, match="0..1000"):
        validate_row(_row(objects=[{"label": "cup", "bbox": [0, 0, 1001, 10]}]))
    with pytest.raises(ValueError, match="count"):
        validate_row(_row(task="counting", fact=None))


def test_features_cover_contract():
    assert set(TASKS) == {"grounding", "referring", "counting", "near_far", "left_right", "perspective"}
    assert list(FEATURES)[:6] == ["id", "source", "image_id", "width", "height", "task"]
    encoded = FEATURES.encode_example(_row())
    assert encoded["objects"][1]["bbox"] == [5, 5, 20, 20]
