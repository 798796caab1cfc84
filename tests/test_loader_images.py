"""Image resolution and accounting: layouts, the persistent index, bad files under each policy, safety."""

from __future__ import annotations

import logging
import os

import pytest
from _loader_fixtures import corrupt, make_dataset, make_jpeg, rows_for_image, train_split, write_shards, FixtureImage
from typer.testing import CliRunner

from spatialforge.builders.check import check_images
from spatialforge.builders.resolvers import get_resolver, inspect_image
from spatialforge.builders.schema import COLUMNS, TASKS
from spatialforge_10m import SpatialForge10M


def _ids(rows):
    return [r["id"] for r in rows]


def _load(builder, streaming):
    return list(train_split(builder, streaming).remove_columns("image"))


# -- resolvers and the index ----------------------------------------------------------------------
def test_each_source_layout_resolves_every_image(tmp_path):
    fx = make_dataset(tmp_path)
    for source, root in fx.image_dirs.items():
        want = {im.image_id: os.path.realpath(im.path) for im in fx.images if im.source == source}
        got = get_resolver(source, root).resolve_many(list(want) + ["not-there"])
        assert got == want, source
    # the FiftyOne labels CSV is not an image; Objects365 ignores extensionless files, Pixmo takes them
    assert get_resolver("openimages", fx.image_dirs["openimages"]).resolve("detections") is None
    open(os.path.join(fx.image_dirs["objects365"], "README"), "w").close()
    assert get_resolver("objects365", fx.image_dirs["objects365"]).resolve("README") is None


def test_ids_with_dots_resolve_to_bare_files_and_to_files_with_an_image_extension(tmp_path):
    root = tmp_path / "mine"
    files = ["bare.v3", "img.v3.jpg", "shot.JPG", "sub dir/nested.v4", "sub dir/my photo.v2.jpeg", "dup.v1", "dup.v1.png"]
    for rel in files:
        make_jpeg(str(root / rel), fmt="PNG" if "." not in rel[-5:] or rel.endswith("png") else "JPEG")
    r = get_resolver("mine", str(root))
    stats = r.build_index()
    assert (stats.files, stats.duplicates) == (7, 1)  # "dup.v1" names the bare file and the .png
    real = os.path.realpath(root)
    want = {
        "bare.v3": "bare.v3",  # ".v3" is no image extension: the whole name is the id
        "img.v3": "img.v3.jpg",  # ".jpg" is: the stem is the id ...
        "img.v3.jpg": "img.v3.jpg",  # ... and so is the full file name
        "shot": "shot.JPG",  # extensions match in any case
        "sub dir/nested.v4": "sub dir/nested.v4",
        "sub dir/my photo.v2": "sub dir/my photo.v2.jpeg",
        "nested.v4": "sub dir/nested.v4",
        "dup.v1": "dup.v1",  # the smallest relative path wins, as for any duplicate
        "dup.v1.png": "dup.v1.png",
    }
    assert r.resolve_many(list(want) + ["img", "bare", "sub dir/nested"]) == {k: os.path.join(real, v) for k, v in want.items()}
    # sources whose files always carry an image extension keep to file stems
    o365 = get_resolver("objects365", str(root))
    assert o365.resolve_many(["img.v3", "img.v3.jpg", "bare.v3"]) == {"img.v3": os.path.join(real, "img.v3.jpg")}


def test_index_is_built_once_and_rebuilt_when_a_folder_changes(tmp_path):
    root = tmp_path / "px"
    make_jpeg(str(root / "a" / "aaa.jpg"))
    r = get_resolver("pixmo", str(root))
    assert r.resolve("aaa").endswith("a/aaa.jpg")
    mtime = os.stat(r.index_path).st_mtime_ns
    r2 = get_resolver("pixmo", str(root))
    assert r2.is_fresh() and r2.resolve("aaa") and os.stat(r2.index_path).st_mtime_ns == mtime  # reused
    make_jpeg(str(root / "a" / "bbb.png"))  # changes the mtime of folder a/
    r3 = get_resolver("pixmo", str(root))
    assert not r3.is_fresh()
    assert r3.resolve("bbb").endswith("a/bbb.png")


def test_duplicate_ids_pick_the_smallest_path_and_are_counted(tmp_path, caplog):
    root = tmp_path / "mine"
    for rel in ("z/dup.jpg", "a/dup.png", "b/dup.jpg"):
        make_jpeg(str(root / rel), fmt="PNG" if rel.endswith("png") else "JPEG")
    r = get_resolver("mine", str(root))
    with caplog.at_level(logging.WARNING):
        stats = r.build_index()
    assert stats.duplicates == 2
    assert "2 image ids of source 'mine' occur more than once" in caplog.text
    assert r.resolve("dup") == os.path.join(os.path.realpath(root), "a", "dup.png")


@pytest.mark.parametrize("bad_id", ["../x", "a/../../x", "/etc/passwd"])
def test_ids_escaping_the_root_are_refused(tmp_path, bad_id):
    root = tmp_path / "mine"
    make_jpeg(str(root / "x.jpg"))
    with pytest.raises(ValueError, match=f"image_id '{bad_id}' would escape the image root '{root}'"):
        get_resolver("mine", str(root)).resolve(bad_id)


@pytest.mark.parametrize("policy", ["error", "warn", "skip"])
@pytest.mark.parametrize("kind", ["dotdot", "symlink"])
def test_builder_refuses_escapes_under_every_policy(tmp_path, policy, kind):
    outside = tmp_path / "outside" / "secret.jpg"
    make_jpeg(str(outside))
    root = tmp_path / "images" / "mine"
    make_jpeg(str(root / "ok.jpg"))
    if kind == "symlink":
        os.symlink(outside, root / "evil.jpg")
        image_id, match = "evil", "image_id 'evil' resolves to 'evil.jpg', a symlink pointing outside the image root"
    else:
        image_id, match = "../outside/secret", "image_id '../outside/secret' would escape the image root"
    im = FixtureImage("mine", image_id, str(outside), 64, 48, (1, 1, 5, 5))
    write_shards(str(tmp_path / "ann"), rows_for_image(im, ("counting",)))
    b = SpatialForge10M(config_name="counting", annotations=str(tmp_path / "ann"), image_dirs={"mine": str(root)},
                        on_missing_image=policy, cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=match) as err:
        b.download_and_prepare()
    assert "refused under every on_missing_image policy" in str(err.value)
    with pytest.raises(ValueError, match=match) as err:
        b.as_streaming_dataset(split="train")
    assert "refused under every on_missing_image policy" in str(err.value)


# -- bad files under each policy ------------------------------------------------------------------
@pytest.fixture
def damaged(tmp_path):
    """make_dataset with 4 bad images: one missing, one zero-byte, one non-image, one truncated."""
    fx = make_dataset(tmp_path)
    by = {(im.source, im.image_id): im for im in fx.images}
    picks = {
        "missing": fx.images[0],  # objects365, EXIF-rotated
        "zero_byte": fx.images[1],  # openimages
        "not_image": fx.images[2],  # pixmo without extension
        "truncated": fx.images[4],  # objects365 in val/
    }
    os.remove(picks["missing"].path)
    for how in ("zero_byte", "not_image", "truncated"):
        corrupt(picks[how].path, how)
    bad_keys = {(im.source, im.image_id) for im in picks.values()}
    assert len(bad_keys) == 4 and all(k in by for k in bad_keys)
    fx.extra.update(picks=picks, bad_keys=bad_keys)
    return fx


def test_inspect_image_names_each_problem(damaged):
    picks = damaged.extra["picks"]
    assert {how: inspect_image(im.path).status for how, im in picks.items()} == {
        "missing": "missing",
        "zero_byte": "zero_byte",
        "not_image": "not_image",
        "truncated": "truncated",
    }
    good = damaged.images[3]
    assert inspect_image(good.path).status == "ok"


def test_inspect_image_reports_the_exif_transposed_size(tmp_path):
    path = str(tmp_path / "r.jpg")
    make_jpeg(path, (80, 48), (1, 1, 9, 9), orientation=6)
    status = inspect_image(path)
    assert (status.status, status.width, status.height) == ("ok", 80, 48)


@pytest.mark.parametrize("streaming", [False, True])
def test_error_policy_fails_before_yielding_naming_count_ids_and_roots(damaged, tmp_path, streaming):
    b = SpatialForge10M(annotations=damaged.annotations, image_dirs=damaged.image_dirs, cache_dir=str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError) as err:
        _load(b, streaming)
    msg = str(err.value)
    assert "4 images referenced by" in msg and f"({4 * len(TASKS)} rows;" in msg
    assert "{'missing': 1, 'not_image': 1, 'truncated': 1, 'zero_byte': 1}" in msg
    missing = damaged.extra["picks"]["missing"]
    assert f"objects365/{missing.image_id} (missing)" in msg
    assert f"objects365={damaged.image_dirs['objects365']!r}" in msg
    assert "on_missing_image='skip'" in msg


@pytest.mark.parametrize("streaming", [False, True])
def test_skip_drops_exactly_the_rows_of_bad_images_and_counts_them(damaged, tmp_path, streaming, caplog):
    b = SpatialForge10M(annotations=damaged.annotations, image_dirs=damaged.image_dirs, on_missing_image="skip",
                        cache_dir=str(tmp_path / "c"))
    with caplog.at_level(logging.WARNING):
        rows = _load(b, streaming)
    bad = damaged.extra["bad_keys"]
    want = [r for r in damaged.rows if (r["source"], r["image_id"]) not in bad]
    assert [{c: r[c] for c in COLUMNS} for r in rows] == want
    assert b.dropped_rows == 4 * len(TASKS) == len(damaged.rows) - len(want)
    assert b.image_stats["dropped_rows_by_reason"] == {r: len(TASKS) for r in ("missing", "not_image", "truncated", "zero_byte")}
    assert f"dropped {4 * len(TASKS)} of {len(damaged.rows)} rows" in caplog.text
    assert "dropping rows of image" not in caplog.text  # skip logs one summary, not one line per image


def test_skip_counts_survive_a_reused_cache(damaged, tmp_path):
    kw = dict(annotations=damaged.annotations, image_dirs=damaged.image_dirs, on_missing_image="skip", cache_dir=str(tmp_path / "c"))
    SpatialForge10M(**kw).download_and_prepare()
    again = SpatialForge10M(**kw)
    again.download_and_prepare()  # nothing to do: counts come from the report kept beside the cache
    assert again.dropped_rows == 4 * len(TASKS)


def test_warn_logs_once_per_image_and_drops_the_rows(damaged, tmp_path, caplog):
    b = SpatialForge10M(annotations=damaged.annotations, image_dirs=damaged.image_dirs, on_missing_image="warn",
                        cache_dir=str(tmp_path / "c"))
    with caplog.at_level(logging.WARNING, logger="spatialforge_10m"):
        rows = _load(b, streaming=True)
    per_image = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("dropping rows of image")]
    assert len(per_image) == 4  # each image has 6 rows, logged once
    for (source, image_id) in damaged.extra["bad_keys"]:
        assert sum(f"{source}/{image_id}:" in m for m in per_image) == 1
    assert len(rows) == len(damaged.rows) - 4 * len(TASKS)


def test_source_without_image_dir_counts_as_missing(tmp_path):
    fx = make_dataset(tmp_path)
    dirs = {k: v for k, v in fx.image_dirs.items() if k != "pixmo"}
    b = SpatialForge10M(config_name="grounding", annotations=fx.annotations, image_dirs=dirs, cache_dir=str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError, match=r"pixmo=\(no image dir given\)"):
        b.download_and_prepare()


@pytest.mark.parametrize("policy", ["error", "warn", "skip"])
def test_decompression_bomb_is_never_decoded(tmp_path, policy):
    fx = make_dataset(tmp_path, n_per_source=1)
    # every fixture image is 64x48 = 3072 pixels: a limit of 3000 makes each of them a "bomb"
    b = SpatialForge10M(config_name="counting", annotations=fx.annotations, image_dirs=fx.image_dirs,
                        on_missing_image=policy, max_image_pixels=3000, cache_dir=str(tmp_path / "c"))
    if policy == "skip":
        assert _load(b, streaming=True) == []
        assert b.image_stats["dropped_rows_by_reason"] == {"too_many_pixels": 4}
    else:
        with pytest.raises(FileNotFoundError, match="too_many_pixels"):
            _load(b, streaming=True)


def test_size_mismatch_is_counted_and_logged_never_rescaled(tmp_path, caplog):
    fx = make_dataset(tmp_path, n_per_source=2)
    same_aspect, other_aspect = fx.images[0], fx.images[1]  # objects365 (EXIF-rotated) and openimages
    make_jpeg(same_aspect.path, (same_aspect.width * 2, same_aspect.height * 2), orientation=6)
    make_jpeg(other_aspect.path, (other_aspect.width, other_aspect.height * 2))
    b = SpatialForge10M(config_name="counting", annotations=fx.annotations, image_dirs=fx.image_dirs,
                        cache_dir=str(tmp_path / "c"))
    with caplog.at_level(logging.WARNING):
        rows = list(b.as_streaming_dataset(split="train"))
    assert "2 images differ in size from the recorded width/height (1 also in aspect ratio" in caplog.text
    by_id = {r["image_id"]: r for r in rows}
    assert by_id[same_aspect.image_id]["image"].size == (same_aspect.width * 2, same_aspect.height * 2)
    assert b.image_stats["sources"]["objects365"]["size_mismatch"] == 1
    assert b.image_stats["sources"]["openimages"]["aspect_mismatch"] == 1


# -- check-images -------------------------------------------------------------------------------
def test_check_images_counts_and_cli_output(damaged, tmp_path):
    resized = damaged.images[3]  # "mine" source, PNG: stored twice as large, same aspect ratio
    make_jpeg(resized.path, (resized.width * 2, resized.height * 2), fmt="PNG")
    report = check_images(damaged.annotations, damaged.image_dirs)
    o365, oi, px, mine = (report.sources[s] for s in ("objects365", "openimages", "pixmo", "mine"))
    assert (o365.rows, o365.images, o365.found, o365.missing, dict(o365.unreadable)) == (18, 3, 1, 1, {"truncated": 1})
    assert (oi.found, oi.missing, dict(oi.unreadable)) == (2, 0, {"zero_byte": 1})
    assert (px.found, dict(px.unreadable)) == (2, {"not_image": 1})
    assert (mine.found, mine.size_mismatch, mine.aspect_ok) == (3, 1, True)
    assert report.rows_affected == 4 * len(TASKS)

    from spatialforge.processing.cli import _register, app

    _register()
    out = tmp_path / "missing.txt"
    args = ["check-images", damaged.annotations, "--missing-out", str(out), "--task", "near_far"]
    for source, root in damaged.image_dirs.items():
        args += ["--image-dir", f"{source}={root}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output  # images are missing or unreadable: the check fails
    lines = {line.split()[0]: line.split() for line in res.output.splitlines() if line.split()}
    assert lines["objects365"][1:7] == ["3", "3", "1", "1", "1", "0"]  # rows images found missing unreadable resized
    assert lines["mine"][1:8] == ["3", "3", "3", "0", "0", "1", "kept"]
    assert "rows whose image is missing or unreadable: 4 of 12" in res.output
    assert out.read_text() == f"objects365\t{damaged.extra['picks']['missing'].image_id}\n"


def test_index_cli_builds_and_reuses(tmp_path):
    from spatialforge.processing.cli import _register, app

    _register()
    root = tmp_path / "o365"
    for k in range(3):
        make_jpeg(str(root / "train" / "patch0" / f"objects365_v2_{k:08d}.jpg"))
    res = CliRunner().invoke(app, ["index", "--source", "objects365", "--image-dir", str(root)])
    assert res.exit_code == 0, res.output
    assert "indexed 3 objects365 image files" in res.output
    res = CliRunner().invoke(app, ["index", "--source", "objects365", "--image-dir", str(root)])
    assert "is up to date" in res.output
    res = CliRunner().invoke(app, ["index", "--source", "objects365", "--image-dir", str(tmp_path / "nope")])
    assert res.exit_code != 0 and "not a directory" in res.output


# -- stored image checks --------------------------------------------------------------------------
@pytest.fixture
def count_inspections(monkeypatch):
    """Count calls of the per-image check (each one opens the file with PIL and reads its tail)."""
    from spatialforge.builders import resolvers

    calls: list[str] = []
    real = resolvers.inspect_image

    def counting(path, max_pixels=None, decode=True):
        calls.append(path)
        return real(path, max_pixels, decode)

    monkeypatch.setattr(resolvers, "inspect_image", counting)
    return calls


def _statuses(report):
    return {k: v.status for k, v in report.bad.items()}, {s: (r.found, r.missing, dict(r.unreadable)) for s, r in report.sources.items()}


def test_second_scan_opens_no_image(tmp_path, count_inspections, monkeypatch):
    fx = make_dataset(tmp_path)
    kw = dict(config_name="near_far", annotations=fx.annotations, image_dirs=fx.image_dirs, cache_dir=str(tmp_path / "c"))
    first = SpatialForge10M(**kw)
    first.as_streaming_dataset(split="train")
    assert sorted(count_inspections) == sorted(os.path.realpath(im.path) for im in fx.images)
    count_inspections.clear()
    import PIL.Image

    opens: list = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: opens.append(a) or real_open(*a, **k))
    again = SpatialForge10M(**kw)  # a new builder, new resolvers: what a new process sees
    ds = again.as_streaming_dataset(split="train")  # the pre-scan runs here
    assert count_inspections == [] and opens == []
    assert len(list(ds)) == len(fx.rows_of("near_far")) == len(opens)  # rows decode their image, once each
    assert again.image_stats == first.image_stats


def test_file_rewritten_in_place_is_checked_again(tmp_path, count_inspections):
    fx = make_dataset(tmp_path)
    assert check_images(fx.annotations, fx.image_dirs).rows_affected == 0
    truncated, garbled = fx.images[0], fx.images[1]
    corrupt(truncated.path, "truncated")  # in place: the folder's mtime stays, the index stays fresh
    size, mtime = os.stat(garbled.path).st_size, os.stat(garbled.path).st_mtime_ns
    with open(garbled.path, "r+b") as f:  # same size, last bytes (the JPEG EOI) overwritten
        f.seek(size - 16)
        f.write(b"\0" * 16)
    os.utime(garbled.path, ns=(mtime + 10**9, mtime + 10**9))  # coarse clocks: make the change visible
    assert os.stat(garbled.path).st_size == size
    assert all(get_resolver(s, r).is_fresh() for s, r in fx.image_dirs.items())
    count_inspections.clear()
    report = check_images(fx.annotations, fx.image_dirs)
    assert sorted(count_inspections) == sorted(os.path.realpath(im.path) for im in (truncated, garbled))
    assert {k: v.status for k, v in report.bad.items()} == {
        (truncated.source, truncated.image_id): "truncated",
        (garbled.source, garbled.image_id): "truncated",
    }


def test_replaced_and_deleted_files_are_seen_and_other_checks_kept(tmp_path, count_inspections):
    fx = make_dataset(tmp_path)
    check_images(fx.annotations, fx.image_dirs)
    replaced, deleted = fx.images[4], fx.images[8]  # objects365 (val/), objects365 (train/)
    with open(replaced.path, "rb") as f:
        data = f.read()
    with open(replaced.path + ".part", "wb") as f:  # a download tool: write aside, rename over
        f.write(data[: len(data) * 2 // 3])
    os.replace(replaced.path + ".part", replaced.path)
    os.remove(deleted.path)
    count_inspections.clear()
    report = check_images(fx.annotations, fx.image_dirs)
    # the folders changed, so the index was rebuilt; it kept the checks of the unchanged files
    assert count_inspections == [os.path.realpath(replaced.path)]
    assert {k: v.status for k, v in report.bad.items()} == {
        (replaced.source, replaced.image_id): "truncated",
        (deleted.source, deleted.image_id): "missing",
    }


def test_file_gone_while_the_index_looks_fresh_is_missing(tmp_path, count_inspections):
    fx = make_dataset(tmp_path, n_per_source=1)
    check_images(fx.annotations, fx.image_dirs)
    gone = fx.images[0]
    folder = os.path.dirname(gone.path)
    st = os.stat(folder)
    os.remove(gone.path)
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))  # e.g. a sync tool restoring folder times
    assert get_resolver(gone.source, fx.image_dirs[gone.source]).is_fresh()
    count_inspections.clear()
    report = check_images(fx.annotations, fx.image_dirs)
    assert {k: v.status for k, v in report.bad.items()} == {(gone.source, gone.image_id): "missing"}
    assert count_inspections == []


def test_a_new_pixel_limit_checks_again(tmp_path, count_inspections):
    fx = make_dataset(tmp_path, n_per_source=1)  # 4 images of 64x48 = 3072 pixels
    assert check_images(fx.annotations, fx.image_dirs).rows_affected == 0
    small = check_images(fx.annotations, fx.image_dirs, max_pixels=3000)
    assert {v.status for v in small.bad.values()} == {"too_many_pixels"} and len(small.bad) == 4
    assert check_images(fx.annotations, fx.image_dirs, max_pixels=3000).rows_affected == small.rows_affected
    assert len(count_inspections) == 8  # 4 with PIL's limit, 4 with 3000, none for the repeat
    assert check_images(fx.annotations, fx.image_dirs).rows_affected == 0


# -- symlinked folders ----------------------------------------------------------------------------
def test_symlinked_subfolder_is_indexed_and_served(tmp_path):
    # objects365/train -> <disk2>/o365/train, as on clusters whose splits live on other disks
    disk2 = tmp_path / "disk2" / "o365" / "train"
    root = tmp_path / "images" / "objects365"
    im_val = FixtureImage("objects365", "objects365_v2_00000001", str(root / "val" / "patch0" / "objects365_v2_00000001.jpg"),
                          64, 48, (4, 4, 20, 20))
    im_link = FixtureImage("objects365", "objects365_v2_00000002", str(disk2 / "patch3" / "objects365_v2_00000002.jpg"),
                           64, 48, (30, 10, 50, 30))
    for im in (im_val, im_link):
        make_jpeg(im.path, (im.width, im.height), im.rect)
    os.symlink(disk2, root / "train")
    r = get_resolver("objects365", str(root))
    stats = r.build_index()
    assert (stats.files, stats.symlinked_dirs, stats.skipped_links) == (2, 1, 0)
    served = os.path.join(os.path.realpath(root), "train", "patch3", "objects365_v2_00000002.jpg")
    assert r.resolve("objects365_v2_00000002") == served
    assert r.resolve_many(["train/patch3/objects365_v2_00000002"]) == {"train/patch3/objects365_v2_00000002": served}
    write_shards(str(tmp_path / "ann"), rows_for_image(im_val, ("grounding",)) + rows_for_image(im_link, ("grounding",)))
    b = SpatialForge10M(config_name="grounding", annotations=str(tmp_path / "ann"), image_dirs={"objects365": str(root)},
                        cache_dir=str(tmp_path / "c"))
    rows = list(b.as_streaming_dataset(split="train"))
    assert sorted(r["image_id"] for r in rows) == [im_val.image_id, im_link.image_id]
    assert all(r["image"].size == (64, 48) for r in rows)
    assert b.image_stats["sources"]["objects365"]["found"] == 2
    # a new file on the other disk changes a stored folder's mtime: the index is rebuilt
    make_jpeg(str(disk2 / "patch3" / "objects365_v2_00000003.jpg"))
    assert not get_resolver("objects365", str(root)).is_fresh()
    assert get_resolver("objects365", str(root)).resolve("objects365_v2_00000003") is not None


def test_symlink_cycles_and_second_links_are_walked_once(tmp_path):
    disk2 = tmp_path / "disk2" / "train"
    make_jpeg(str(disk2 / "a.jpg"))
    root = tmp_path / "mine"
    make_jpeg(str(root / "own" / "b.jpg"))
    os.symlink(disk2, root / "train")
    os.symlink(disk2, root / "train_again")  # the same disk twice
    os.symlink(root / "own", root / "own_alias")  # a folder inside the root
    os.symlink(root, root / "own" / "loop")  # a cycle through the root
    os.symlink(tmp_path, disk2 / "up")  # a cycle out of the linked tree, back over the root
    r = get_resolver("mine", str(root))
    stats = r.build_index()
    assert (stats.files, stats.duplicates, stats.symlinked_dirs, stats.skipped_links) == (2, 0, 1, 4)
    real = os.path.realpath(root)
    assert r.resolve_many(["a", "b"]) == {"a": os.path.join(real, "train", "a.jpg"), "b": os.path.join(real, "own", "b.jpg")}


def test_file_symlink_out_of_the_root_is_refused_also_inside_a_linked_folder(tmp_path):
    secret = tmp_path / "etc" / "passwd.jpg"  # stands for /etc/passwd: any file outside the image trees
    make_jpeg(str(secret))
    disk2 = tmp_path / "disk2" / "train"
    make_jpeg(str(disk2 / "ok.jpg"))
    os.symlink(secret, disk2 / "evil.jpg")
    root = tmp_path / "mine"
    make_jpeg(str(root / "x.jpg"))
    os.symlink(disk2, root / "train")
    os.symlink(secret, root / "evil2.jpg")
    os.symlink(disk2 / "ok.jpg", root / "alias.jpg")  # points into a followed tree: allowed
    r = get_resolver("mine", str(root))
    assert r.build_index().outside_links == 2
    assert r.resolve("alias") == os.path.join(os.path.realpath(root), "alias.jpg")
    assert r.resolve("ok") == os.path.join(os.path.realpath(root), "train", "ok.jpg")
    for image_id, rel in (("evil", "train/evil.jpg"), ("evil2", "evil2.jpg")):
        with pytest.raises(ValueError, match=f"image_id '{image_id}' resolves to '{rel}', a symlink pointing outside the image root"):
            r.resolve(image_id)


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_image_gone_after_the_pre_scan_follows_the_policy(tmp_path, policy, caplog):
    import pickle

    fx = make_dataset(tmp_path, n_per_source=2)
    b = SpatialForge10M(config_name="counting", annotations=fx.annotations, image_dirs=fx.image_dirs,
                        on_missing_image=policy, cache_dir=str(tmp_path / "c"))
    ds = b.as_streaming_dataset(split="train").remove_columns("image")
    gone = fx.images[5]  # openimages, validation/
    os.remove(gone.path)
    get_resolver(gone.source, fx.image_dirs[gone.source]).build_index()  # e.g. another job refreshed it
    ds = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker gets: it opens the index afresh
    row_id = next(r["id"] for r in fx.rows_of("counting") if r["image_id"] == gone.image_id)
    if policy == "error":
        with pytest.raises(FileNotFoundError, match=f"image openimages/{gone.image_id} of row '{row_id}' is missing"):
            list(ds)
        return
    with caplog.at_level(logging.WARNING):
        rows = list(ds)
    assert [r["id"] for r in rows] == [r["id"] for r in fx.rows_of("counting") if r["id"] != row_id]
    assert f"dropping row '{row_id}': image openimages/{gone.image_id} disappeared" in caplog.text


def test_checks_in_small_blocks_give_the_same_report(damaged, count_inspections, monkeypatch):
    from spatialforge.builders import resolvers

    want = check_images(damaged.annotations, damaged.image_dirs)
    assert len(count_inspections) == len(damaged.images) - 1  # the missing one has no file to open
    count_inspections.clear()
    monkeypatch.setattr(resolvers, "_CHECK_BLOCK", 2)
    monkeypatch.setattr(resolvers, "_CHECK_CHUNK", 1)
    again = check_images(damaged.annotations, damaged.image_dirs)
    assert count_inspections == []
    assert _statuses(again) == _statuses(want) and again.to_dict() == want.to_dict()
    assert {k: v.status for k, v in again.bad.items()} == {
        (im.source, im.image_id): how for how, im in damaged.extra["picks"].items()
    }


@pytest.mark.parametrize("streaming", [False, True])
def test_skip_that_drops_every_row_gives_an_empty_dataset(tmp_path, streaming, caplog):
    from spatialforge.builders.schema import features_with_image

    fx = make_dataset(tmp_path, n_per_source=1)
    empty = {source: str(tmp_path / "empty" / source) for source in fx.image_dirs}
    for root in empty.values():
        os.makedirs(root)
    b = SpatialForge10M(config_name="counting", annotations=fx.annotations, image_dirs=empty, on_missing_image="skip",
                        cache_dir=str(tmp_path / "c"))
    with caplog.at_level(logging.WARNING):
        ds = train_split(b, streaming)
        if not streaming:
            assert ds.num_rows == 0
    assert ds.features == features_with_image()
    assert list(ds) == []
    assert b.dropped_rows == 4 and b.image_stats["dropped_rows_by_reason"] == {"missing": 4}
    assert "dropped 4 of 4 rows" in caplog.text and "every row" in caplog.text


# -- CLI errors and exit codes --------------------------------------------------------------------
def _cli(args):
    from spatialforge.processing.cli import _register, app

    _register()
    return CliRunner().invoke(app, args)


def _dir_args(image_dirs):
    return [a for source, root in image_dirs.items() for a in ("--image-dir", f"{source}={root}")]


@pytest.mark.parametrize(
    ("case", "want"),
    [
        ("missing_dir", "Error: Invalid value for '--image-dir': image root for source 'pixmo' is not a directory: '/nonexistent'"),
        ("bad_task", "Error: Invalid value for '--task': task must be one of"),
        ("bad_dir_syntax", "Error: Invalid value for '--image-dir': --image-dir must look like SOURCE=DIR, got 'pixmo'"),
        ("no_annotations", "Error: Invalid value for 'DATASET': annotations "),
        ("bad_index_root", "Error: Invalid value for '--image-dir': image root for source 'objects365' is not a directory: '/nonexistent'"),
    ],
)
def test_cli_usage_errors_are_one_line_on_stderr_with_exit_code_2(tmp_path, case, want):
    fx = make_dataset(tmp_path, n_per_source=1)
    base = ["check-images", fx.annotations] + _dir_args(fx.image_dirs)
    args = {
        "missing_dir": ["check-images", fx.annotations, "--image-dir", "pixmo=/nonexistent"],
        "bad_task": base + ["--task", "bogus"],
        "bad_dir_syntax": base + ["--image-dir", "pixmo"],
        "no_annotations": ["check-images", str(tmp_path / "nope")] + _dir_args(fx.image_dirs),
        "bad_index_root": ["index", "--source", "objects365", "--image-dir", "/nonexistent"],
    }[case]
    res = _cli(args)
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)  # no traceback
    assert res.stderr.startswith(want) and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.output


def test_cli_check_images_exit_code_gates_on_missing_unreadable_and_strict_size(tmp_path):
    fx = make_dataset(tmp_path, n_per_source=1)
    args = ["check-images", fx.annotations, "--task", "counting"] + _dir_args(fx.image_dirs)
    res = _cli(args)
    assert res.exit_code == 0, res.output  # everything found
    assert _cli(args + ["--strict"]).exit_code == 0
    resized = fx.images[3]  # "mine", PNG: twice as large, same aspect ratio
    make_jpeg(resized.path, (resized.width * 2, resized.height * 2), fmt="PNG")
    res = _cli(args)
    assert res.exit_code == 0, res.output  # size mismatches are reported, not failed ...
    assert next(line.split() for line in res.stdout.splitlines() if line.startswith("mine"))[:7] == ["mine", "1", "1", "1", "0", "0", "1"]
    res = _cli(args + ["--strict"])
    assert res.exit_code == 1, res.output  # ... unless --strict
    assert "1 images differ in size from the recorded width/height (--strict)" in res.stderr
    os.remove(fx.images[0].path)  # objects365
    corrupt(fx.images[1].path, "truncated")  # openimages
    res = _cli(args)
    assert res.exit_code == 1, res.output
    assert "2 images are missing or unreadable (2 of 4 rows)" in res.stderr
    assert "rows whose image is missing or unreadable: 2 of 4" in res.stdout
    help_text = _cli(["check-images", "--help"]).stdout
    assert "Exit status" in help_text and "--strict" in help_text


def test_cli_check_images_refuses_escaping_ids_with_a_clean_error(tmp_path):
    root = tmp_path / "mine"
    make_jpeg(str(root / "ok.jpg"))
    im = FixtureImage("mine", "../outside/secret", str(tmp_path / "x.jpg"), 64, 48, (1, 1, 5, 5))
    write_shards(str(tmp_path / "ann"), rows_for_image(im, ("counting",)))
    res = _cli(["check-images", str(tmp_path / "ann"), "--image-dir", f"mine={root}"])
    assert res.exit_code == 1, res.output
    assert res.stderr.startswith("Error: image_id '../outside/secret' would escape the image root")
    assert "refused under every on_missing_image policy" in res.stderr and "Traceback" not in res.output
