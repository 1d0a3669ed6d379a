"""Detectors measured on real labelled pictures: the two folder layouts, exact metrics of stand-in detectors
whose boxes we choose, the plots, and ``anibot eval detector --pictures``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from core.evaluation.peer_detectors import PEERS, PeerSpec, load_peer
from core.evaluation.picture_folders import PictureFolderError, load_picture_folder
from core.evaluation.picture_plots import write_picture_plots
from core.evaluation.real_pictures import evaluate_on_pictures, pictures_markdown
from core.vision.results import Box
from core.vision.slots.base import Detection, Manifest
from tests.conftest import shared_data_dir

# three pictures told apart by their size (what the stand-in detectors key on), six boxes in all
TRUTH: dict[str, tuple[tuple[int, int], list[list[float]]]] = {
    "a.jpg": ((200, 150), [[20, 20, 80, 80], [120, 40, 180, 100]]),
    "b.jpg": ((160, 160), [[40, 40, 120, 120]]),
    "c.jpg": ((240, 120), [[10, 10, 60, 60], [100, 20, 160, 80], [170, 30, 230, 90]]),
}


def _draw(path: Path, size: tuple[int, int], boxes: list[list[float]]) -> None:
    image = Image.new("RGB", size, (235, 230, 220))
    draw = ImageDraw.Draw(image)
    for box in boxes:
        draw.ellipse(box, fill=(250, 210, 180), outline=(60, 40, 30))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=90)


def write_json_folder(root: Path) -> Path:
    entries = []
    for name, (size, boxes) in TRUTH.items():
        _draw(root / "images" / name, size, boxes)
        entries.append(
            {"file": f"images/{name}", "width": size[0], "height": size[1], "boxes": boxes, "kind": "face"}
        )
    (root / "labels.json").write_text(json.dumps(entries), encoding="utf-8")
    return root


def _voc_xml(name: str, size: tuple[int, int], objects: list[tuple[str, list[float]]]) -> str:
    parts = "".join(
        f"<object><name>{label}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for label, b in objects
    )
    return (
        f"<annotation><filename>{name}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size>{parts}</annotation>"
    )


def write_voc_folder(root: Path, *, extra_body: bool = False) -> Path:
    """Annotations/<stem>.xml and JPEGImages/<name>; with ``extra_body`` a whole-picture "body" object in a.xml."""
    for name, (size, boxes) in TRUTH.items():
        _draw(root / "JPEGImages" / name, size, boxes)
        objects = [("face", b) for b in boxes]
        if extra_body and name == "a.jpg":
            objects.append(("body", [0, 0, size[0], size[1]]))
        xml = root / "Annotations" / f"{Path(name).stem}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(_voc_xml(name, size, objects), encoding="utf-8")
    return root


def _box(b: list[float], dx: float = 0.0) -> Box:
    return Box(b[0] + dx, b[1], b[2] + dx, b[3])


class ChosenBoxes:
    """A HeadDetector answering, for a picture of a given size, the detections it was given for that size."""

    def __init__(
        self, version: str, by_size: dict[tuple[int, int], list[Detection]], confidence: float
    ) -> None:
        self.version = version
        self.by_size = by_size
        self.confidence = confidence
        self.asked_with: list[float] = []

    def detect(self, image: Image.Image) -> list[Detection]:
        self.asked_with.append(self.confidence)
        return [d for d in self.by_size.get(image.size, []) if d.score >= self.confidence]

    @classmethod
    def from_manifest(cls, manifest: Manifest, settings: object) -> ChosenBoxes:
        return perfect(manifest.thresholds["confidence"], version=manifest.version)


def perfect(
    confidence: float = 0.5, *, skip: tuple[str, int] | None = None, version: str = "perfect"
) -> ChosenBoxes:
    return ChosenBoxes(
        version,
        {
            size: [Detection(_box(b), 0.9) for j, b in enumerate(boxes) if (name, j) != skip]
            for name, (size, boxes) in TRUTH.items()
        },
        confidence,
    )


def shifted() -> ChosenBoxes:
    """Every box moved right by 0.4 of its width: IoU (1 - 0.4) / (1 + 0.4) = 0.4286 with its truth box."""
    return ChosenBoxes(
        "shifted",
        {
            size: [Detection(_box(b, 0.4 * (b[2] - b[0])), 0.9) for b in boxes]
            for size, boxes in (TRUTH[n] for n in TRUTH)
        },
        0.5,
    )


def with_false_box(score: float, confidence: float = 0.5) -> ChosenBoxes:
    detector = perfect(confidence, version=f"false-box-{score}")
    detector.by_size[TRUTH["b.jpg"][0]] = [
        *detector.by_size[TRUTH["b.jpg"][0]],
        Detection(Box(0, 0, 30, 30), score),
    ]
    return detector


@pytest.fixture
def json_folder(tmp_path: Path) -> Path:
    return write_json_folder(tmp_path / "json")


def test_both_layouts_load_the_same_pictures(tmp_path, json_folder):
    from_json = load_picture_folder(json_folder)
    from_voc = load_picture_folder(write_voc_folder(tmp_path / "voc"))
    assert (from_json.layout, from_voc.layout) == ("labels.json", "Pascal VOC")
    assert [p.name for p in from_json.pictures] == ["images/a.jpg", "images/b.jpg", "images/c.jpg"]
    assert [p.name for p in from_voc.pictures] == ["JPEGImages/a.jpg", "JPEGImages/b.jpg", "JPEGImages/c.jpg"]
    assert [p.boxes for p in from_json.pictures] == [p.boxes for p in from_voc.pictures]
    assert from_json.pictures[2].boxes[2] == (170.0, 30.0, 230.0, 90.0)
    assert from_json.n_boxes == from_voc.n_boxes == 6
    assert from_voc.pictures[0].image.size == (200, 150) and from_voc.pictures[0].image.mode == "RGB"
    assert len(load_picture_folder(json_folder, limit=2).pictures) == 2


def test_voc_class_filter_and_images_next_to_the_xml(tmp_path):
    folder = write_voc_folder(tmp_path / "voc", extra_body=True)
    assert load_picture_folder(folder).n_boxes == 7  # default: every object
    assert load_picture_folder(folder, classes=["face"]).n_boxes == 6
    flat = tmp_path / "flat"  # xml and image side by side, no Annotations/
    flat.mkdir()
    (folder / "JPEGImages" / "b.jpg").rename(flat / "b.jpg")
    (folder / "Annotations" / "b.xml").rename(flat / "b.xml")
    loaded = load_picture_folder(flat)
    assert [p.name for p in loaded.pictures] == ["b.jpg"] and loaded.pictures[0].boxes == [
        (40.0, 40.0, 120.0, 120.0)
    ]


def test_perfect_detector(json_folder):
    pictures = load_picture_folder(json_folder).pictures
    detector = perfect(0.5)
    report = evaluate_on_pictures(detector, pictures, 0.5)
    assert detector.asked_with == [0.001] * 3 and detector.confidence == 0.5  # all boxes asked, then restored
    for iou in (0.3, 0.5):
        point = report.operating[iou]
        assert (point.true_positives, point.predictions, point.truths) == (6, 6, 6)
        assert point.precision == point.recall == point.f1 == 1.0
        assert report.best_f1[iou].confidence == 0.9 and report.best_f1[iou].f1 == 1.0
    assert report.map50 == 1.0 and report.map50_95 == 1.0
    assert report.worst() == [] and report.n_pictures == 3 and report.n_boxes == 6


def test_shifted_boxes_count_at_iou_0_3_only(json_folder):
    report = evaluate_on_pictures(shifted(), load_picture_folder(json_folder).pictures, 0.5)
    assert report.operating[0.3].f1 == 1.0 and report.curves[0.3].ap == 1.0
    assert report.operating[0.5].precision == report.operating[0.5].recall == report.operating[0.5].f1 == 0.0
    assert report.map50 == 0.0 and report.map50_95 == 0.0


def test_a_missed_box(json_folder):
    report = evaluate_on_pictures(perfect(skip=("c.jpg", 2)), load_picture_folder(json_folder).pictures, 0.5)
    point = report.operating[0.5]
    assert (point.true_positives, point.predictions, point.truths) == (5, 5, 6)
    assert point.precision == 1.0 and point.recall == pytest.approx(5 / 6)
    assert point.f1 == pytest.approx(10 / 11)
    assert report.map50 == pytest.approx(
        84 / 101
    )  # precision 1 on the 101-point recall grid up to 5/6 (0..0.83)
    assert report.map50_95 == pytest.approx(84 / 101)
    [worst] = report.worst()
    assert (worst.name, worst.missed, worst.false) == ("images/c.jpg", [2], [])


def test_a_false_box_below_the_true_ones(json_folder):
    pictures = load_picture_folder(json_folder).pictures
    report = evaluate_on_pictures(with_false_box(0.6), pictures, 0.5)
    point = report.operating[0.3]
    assert (point.true_positives, point.predictions) == (6, 7)
    assert (
        point.precision == pytest.approx(6 / 7) and point.recall == 1.0 and point.f1 == pytest.approx(12 / 13)
    )
    assert report.map50 == 1.0  # the false box comes after every true one
    best = report.best_f1[0.3]
    assert best.confidence == 0.9 and best.f1 == 1.0 and best.predictions == 6  # reported, not applied
    [worst] = report.worst()
    assert (worst.name, worst.missed, worst.false) == ("images/b.jpg", [], [1])
    assert evaluate_on_pictures(with_false_box(0.6), pictures, 0.7).operating[0.3].precision == 1.0


def test_a_false_box_above_the_true_ones(json_folder):
    report = evaluate_on_pictures(with_false_box(0.95), load_picture_folder(json_folder).pictures, 0.5)
    assert report.map50 == pytest.approx(6 / 7)  # its envelope is 6/7 at every recall
    assert report.operating[0.5].precision == pytest.approx(6 / 7)
    assert report.best_f1[0.5].confidence == 0.9 and report.best_f1[0.5].f1 == pytest.approx(12 / 13)


def test_markdown_side_by_side_and_the_plots(tmp_path, json_folder):
    pictures = load_picture_folder(json_folder).pictures
    reports = {
        "ours": evaluate_on_pictures(perfect(), pictures, 0.5),
        "peer": evaluate_on_pictures(perfect(skip=("c.jpg", 2)), pictures, 0.5),
    }
    text = pictures_markdown(reports, "Heads")
    assert "| metric | ours `perfect` | peer `perfect` | ours/peer |" in text
    assert "| F1 @ IoU 0.3 | 1.000 | 0.909 | 1.10 |" in text
    assert "| recall @ IoU 0.5 | 1.000 | 0.833 | 1.20 |" in text
    assert "| best-F1 confidence @ IoU 0.3 | 0.900 (F1 1.000) | 0.900 (F1 0.909) |  |" in text
    plots = write_picture_plots(reports, pictures, tmp_path / "plots")
    assert [p.name for p in plots] == [
        "detector-pictures-pr.png",
        "detector-pictures-worst-ours.png",
        "detector-pictures-worst-peer.png",
    ]
    assert all(p.stat().st_size > 5000 for p in plots)
    assert Image.open(plots[2]).size[0] > 300


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda root: (root / "images" / "b.jpg").unlink(), "images/b.jpg is missing"),
        (lambda root: (root / "images" / "b.jpg").write_bytes(b"not a jpeg"), "b.jpg: not a readable image"),
        (
            lambda root: Image.new("RGB", (10, 10)).save(root / "images" / "b.jpg"),
            "is labelled 160x160 but is 10x10",
        ),
        (
            lambda root: (root / "labels.json").write_text("[{", encoding="utf-8"),
            "labels.json: not readable JSON",
        ),
    ],
)
def test_bad_files_are_errors_naming_them(json_folder, spoil, says):
    spoil(json_folder)
    with pytest.raises(PictureFolderError, match=says.replace(".", r"\.")):
        load_picture_folder(json_folder)


def test_boxes_outside_the_picture_are_errors_and_small_overhangs_clipped(json_folder):
    labels = json.loads((json_folder / "labels.json").read_text(encoding="utf-8"))
    labels[1]["boxes"] = [[40, 40, 161.5, 120]]
    (json_folder / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    assert load_picture_folder(json_folder).pictures[1].boxes == [(40.0, 40.0, 160.0, 120.0)]
    labels[1]["boxes"] = [[40, 40, 200, 120]]
    (json_folder / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    with pytest.raises(PictureFolderError, match=r"b\.jpg is empty or outside its 160x160 picture"):
        load_picture_folder(json_folder)


def test_a_folder_of_neither_layout(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"")
    with pytest.raises(PictureFolderError, match=r"no labels\.json and no Pascal VOC"):
        load_picture_folder(tmp_path)


def test_a_missing_peer_is_skipped_with_a_reason(monkeypatch):
    monkeypatch.setitem(
        PEERS, "animeface", PeerSpec("core.no_such_module", "X", "available", "pip install x")
    )
    loaded = load_peer("animeface")
    assert loaded.detector is None and "core.no_such_module cannot be imported" in loaded.reason
    with pytest.raises(ValueError, match="unknown peer detector 'nope'"):
        load_peer("nope")


# --- the command, with a stand-in detector installed through a manifest and a peer of this module


def peer_available() -> bool:
    return True


def peer_unavailable() -> bool:
    return False


def MissingOnePeer() -> ChosenBoxes:  # stands for a peer detector class
    return perfect(0.5, skip=("c.jpg", 2), version="missing-one")


@pytest.fixture
def installed_stand_in(tmp_path, monkeypatch):
    from core.settings import get_settings
    from core.vision.slots.registry import LOADERS

    monkeypatch.setitem(LOADERS, "chosen-boxes", "tests.test_eval_pictures:ChosenBoxes.from_manifest")
    models = tmp_path / "models"
    Manifest(
        slot="detector", name="stand-in", format="chosen-boxes", thresholds={"confidence": 0.5},
        folder=models / "detector" / "stand-in",
    ).save()  # fmt: skip
    monkeypatch.setenv("ANIBOT_MODELS_DIR", str(models))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _eval(*args: str):
    from typer.testing import CliRunner

    from cli.main import app

    return CliRunner().invoke(app, ["eval", "detector", *args])


def said(done) -> str:
    """What the command printed, with rich's line wrapping undone."""
    return " ".join(done.output.split())


def test_command_compares_with_the_peer(tmp_path, json_folder, installed_stand_in, monkeypatch):
    monkeypatch.setitem(
        PEERS, "animeface", PeerSpec("tests.test_eval_pictures", "MissingOnePeer", "peer_available", "")
    )
    out = tmp_path / "out"
    done = _eval("--pictures", str(json_folder), "--out", str(out))
    assert done.exit_code == 0, done.output
    table = (out / "detector-pictures.md").read_text(encoding="utf-8")
    assert "| metric | ours `stand-in@" in table and "| peer `missing-one` | ours/peer |" in table
    assert "| F1 @ IoU 0.3 | 1.000 | 0.909 | 1.10 |" in table
    assert "| F1 @ IoU 0.3 | 1.000 | 0.909 | 1.10 |" in done.stdout
    for name in (
        "detector-pictures-pr.png",
        "detector-pictures-worst-ours.png",
        "detector-pictures-worst-peer.png",
    ):
        assert (out / name).stat().st_size > 5000


def test_command_without_the_peer(tmp_path, json_folder, installed_stand_in, monkeypatch):
    unavailable = PeerSpec("tests.test_eval_pictures", "MissingOnePeer", "peer_unavailable", "pip install x")
    monkeypatch.setitem(PEERS, "animeface", unavailable)
    out = tmp_path / "out"
    done = _eval("--pictures", str(json_folder), "--out", str(out), "--limit", "2")
    assert done.exit_code == 0, done.output
    assert "peer animeface skipped: its package is not installed (pip install x)" in said(done)
    table = (out / "detector-pictures.md").read_text(encoding="utf-8")
    assert "2 pictures, 3 labelled boxes" in table and "ours/peer" not in table
    assert "| F1 @ IoU 0.5 | 1.000 |" in table
    alone = _eval("--pictures", str(json_folder), "--out", str(out), "--no-peer")
    assert alone.exit_code == 0 and "skipped" not in alone.output
    assert not (out / "detector-pictures-worst-peer.png").exists()


def test_command_on_a_bad_folder_exits_2(tmp_path, json_folder, installed_stand_in):
    (json_folder / "images" / "c.jpg").unlink()
    done = _eval("--pictures", str(json_folder), "--out", str(tmp_path / "out"), "--no-peer")
    assert done.exit_code == 2 and "images/c.jpg is missing" in said(done)
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _eval("--pictures", str(empty), "--no-peer")
    assert done.exit_code == 2 and "no labels.json and no Pascal VOC" in said(done)
    done = _eval("--pictures", str(json_folder), "--peer", "nope")
    assert done.exit_code == 2 and "unknown peer detector 'nope'" in said(done)


def test_the_shared_pixiv_faces_load():
    folder = shared_data_dir() / "scenes" / "pixiv-faces-train"
    if not (folder / "labels.json").is_file():
        pytest.skip(f"{folder} is not there")
    loaded = load_picture_folder(folder)
    assert loaded.layout == "labels.json" and len(loaded.pictures) == 173 and loaded.n_boxes == 173
    assert all(p.name.startswith("images/") and len(p.boxes) == 1 for p in loaded.pictures)
