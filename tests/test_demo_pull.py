"""`anibot demo --pull`: the recommended community models installed from a stand-in hub on loopback instead of
trained starters, then the demo run on them; offline, one line and the starter build as before; the prompt only
on a terminal. The three "community" models are tiny stand-ins exported here in the formats the slots load
(ultralytics' YOLO ONNX layout, an ONNX embedder, a WD14 tagger), pinned by a catalogue made by the test.

Starter training is never run here: ``build_missing`` is replaced by a recorder of what it would have trained."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from core.settings import Settings, get_settings
from core.vision.slots.model_advice import Machine
from core.vision.slots.pull import probe_hub
from core.vision.slots.registry import read_active
from core.vision.slots.tagger import TagDef, write_selected_tags
from tests.test_pull import StandInHub, closed_port, serving

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

REVISION = "fedcba9876543210fedcba9876543210fedcba98"
REPO_ID = "anibot-tests/community"
NAMES = {"detector": "stand-in-head", "embedder": "stand-in-ccip", "tagger": "stand-in-wd14"}


class CentreHead(torch.nn.Module):
    """YOLO layout (1, 5, 1): one 'head' box in the middle of the input, score 0.9."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box = torch.tensor([32.0, 32.0, 40.0, 40.0, 0.9]).reshape(1, 5, 1)
        return box + x.mean() * 1e-9


class ColourStats(torch.nn.Module):
    """(n, 9) features: per-channel mean, max and min of the crop."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3)), x.amin(dim=(2, 3))], dim=1)


@pytest.fixture(scope="module")
def community(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """Each slot's files (name -> bytes), as a hub would serve them."""
    from core.learning.starter.common import export_onnx
    from tests.test_tagger import export_stand_in

    folder = tmp_path_factory.mktemp("community")
    detector = export_onnx(
        CentreHead(), torch.zeros(1, 3, 64, 64), folder / "head.onnx", input_names=("images",)
    )
    embedder = export_onnx(
        ColourStats(),
        torch.zeros(1, 3, 32, 32),
        folder / "ccip.onnx",
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    tags = [TagDef(1, "smile", 0, 10), TagDef(2, "general", 9, 1)]
    tagger = export_stand_in(folder / "wd14.onnx", np.array([3.0, 3.0], np.float32), size=32)
    vocabulary = write_selected_tags(folder / "selected_tags.csv", tags)
    return {
        "detector": {"model.onnx": detector.read_bytes()},
        "embedder": {"model_feat.onnx": embedder.read_bytes()},
        "tagger": {"model.onnx": tagger.read_bytes(), "selected_tags.csv": vocabulary.read_bytes()},
    }


def catalogue_data(files: dict[str, dict[str, bytes]]) -> dict[str, Any]:
    formats = {"detector": "yolo-onnx", "embedder": "onnx-embedder", "tagger": "wd14-onnx"}
    roles = {"model.onnx": "onnx", "model_feat.onnx": "onnx", "selected_tags.csv": "tags"}
    models = []
    for slot, named in files.items():
        models.append(
            {
                "name": NAMES[slot],
                "slot": slot,
                "format": formats[slot],
                "licence": "MIT",
                "homepage": f"https://huggingface.co/{REPO_ID}",
                "files": {
                    roles[filename]: {
                        "url": f"https://huggingface.co/{REPO_ID}/resolve/{REVISION}/{slot}/{filename}",
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "size": len(data),
                    }
                    for filename, data in named.items()
                },
                "thresholds": {
                    "detector": {"confidence": 0.5, "iou": 0.7},
                    "embedder": {"identify": 0.5},
                }.get(slot, {"general": 0.5, "character": 0.9}),
                "input_size": 32 if slot != "detector" else 64,
                "extra": {"resize": "stretch"} if slot == "detector" else {},
                "scores": {"detector": {"f1": 0.9}, "embedder": {"f1": 0.9}, "tagger": {"macro_f1": 0.4}}[
                    slot
                ],
                "sources": {"files": "computed by the test", "scores": "made up by the test"},
            }
        )
    return {"models": models}


def serve(hub: StandInHub, files: dict[str, dict[str, bytes]]) -> None:
    for slot, named in files.items():
        for filename, data in named.items():
            hub.serve(f"{slot}/{filename}", data, revision=REVISION, repo=REPO_ID)


@pytest.fixture
def hub() -> Iterator[StandInHub]:
    with serving() as stand_in:
        yield stand_in


@pytest.fixture
def demo_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The CLI's settings from this test's environment; a CPU machine; starter training recorded, never run."""
    import cli.models_cmd
    from core.learning.starter.build import missing_slots

    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("ANIBOT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ANIBOT_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("ANIBOT_DEVICE", "cpu")
    monkeypatch.setenv("ANIBOT_ONNX_THREADS", "1")
    for name in (
        "HF_ENDPOINT",
        "HF_TOKEN",
        "ANIBOT_HF_ENDPOINT",
        "ANIBOT_HF_TOKEN",
        "ANIBOT_FACES_DIR",
        "ANIBOT_MORE_FACES_DIRS",
        "ANIBOT_PICTURES_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli.models_cmd, "detect_machine", lambda: Machine(cpus=2, ram_bytes=8 * 10**9))
    recorded: dict[str, Any] = {"trained": None}

    def build_missing(settings: Settings) -> None:  # what the demo would have trained, instead of training it
        recorded["trained"] = missing_slots(settings)

    monkeypatch.setattr(cli.models_cmd, "build_missing", build_missing)
    catalog = tmp_path / "catalog.json"
    recorded["catalog"] = catalog
    get_settings.cache_clear()
    yield recorded
    get_settings.cache_clear()


def run_demo(*args: str, input: str | None = None) -> Any:
    from cli.main import app

    return CliRunner().invoke(app, ["demo", *args], input=input)


def test_demo_pull_installs_the_recommended_models_then_runs(
    demo_env: dict[str, Any],
    hub: StandInHub,
    community: dict[str, dict[str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serve(hub, community)
    demo_env["catalog"].write_text(json.dumps(catalogue_data(community)))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    out = tmp_path / "out"

    result = run_demo("--pull", "--catalog", str(demo_env["catalog"]), "--scenes", "1", "--out", str(out))

    assert result.exit_code == 0, result.output
    log = result.stderr
    assert "Pulling the community models recommended for this machine" in log
    for slot, name in NAMES.items():
        assert f"Installed {name} ({slot}," in log and f"Active {slot}: {name}." in log
    assert read_active(tmp_path / "models") == NAMES
    enrolled = next(line for line in log.splitlines() if line.startswith(f"Gallery for {NAMES['embedder']}:"))
    assert int(enrolled.split(":")[1].split()[0]) > 0  # the synthetic cast, embedded by the pulled embedder
    assert demo_env["trained"] == ["captioner"]  # no starter detector, embedder or tagger left to train
    # then the demo ran on the pulled models: its scene analysed, scored and written out
    assert "Synthetic scenes: heads found" in log
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["status"] == "ok"
    (head,) = records[0]["heads"]
    width, height = records[0]["width"], records[0]["height"]
    # the pulled detector's centre box (12..52 of its 64 px input), stretched back as its manifest asks
    assert head["box"] == pytest.approx(
        [12 / 64 * width, 12 / 64 * height, 52 / 64 * width, 52 / 64 * height]
    )
    assert head["candidates"] and head["candidates"][0]["source"] == "gallery"  # the gallery enrolled for it
    served = {path for path, _ in hub.requests if "/resolve/" in path}
    assert served == {
        f"/{REPO_ID}/resolve/{REVISION}/{slot}/{f}" for slot, named in community.items() for f in named
    }


def test_demo_pull_offline_says_so_in_one_line_and_trains(
    demo_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")

    class Trained(Exception):
        pass

    import cli.models_cmd

    def build_missing(settings: Settings) -> None:  # stop the demo where it would train
        from core.learning.starter.build import missing_slots

        demo_env["trained"] = missing_slots(settings)
        raise Trained

    monkeypatch.setattr(cli.models_cmd, "build_missing", build_missing)
    started = time.perf_counter()
    result = run_demo("--pull", "--scenes", "1", "--out", str(tmp_path / "out"))
    elapsed = time.perf_counter() - started

    assert isinstance(result.exception, Trained), result.output
    offline = [line for line in result.stderr.splitlines() if "Offline" in line]
    assert offline == [
        f"Offline (cannot reach 127.0.0.1:{port}: Connection refused): training the starter models instead of "
        "pulling community models."
    ]
    assert "Pulling" not in result.stderr and "Traceback" not in result.output
    assert demo_env["trained"] == ["detector", "embedder", "tagger", "captioner"]  # trained as before
    assert elapsed < 5  # no long network timeout before the starters are trained
    assert not (tmp_path / "models" / ".staging").exists()


def test_the_hub_probe_gives_up_after_its_configured_timeout() -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        accepted: list[socket.socket] = []
        threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
        started = time.perf_counter()
        reason = probe_hub(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.3)
        elapsed = time.perf_counter() - started
        for conn in accepted:
            conn.close()
    assert reason is not None and reason.endswith("timed out") and "cannot reach 127.0.0.1:" in reason
    assert 0.25 <= elapsed < 2
    assert Settings(_env_file=None).hub_probe_timeout_s == 3.0
    assert Settings(_env_file=None, hub_probe_timeout_s=0.5).hub_probe_timeout_s == 0.5


def test_the_hub_probe_counts_any_http_answer_as_online(hub: StandInHub) -> None:
    # the stand-in serves GET only: its HTTP 501 to the probe's HEAD still says the hub is there
    assert probe_hub(hub.endpoint, timeout_s=2) is None
    port = closed_port()
    assert (
        probe_hub(f"http://127.0.0.1:{port}", timeout_s=2)
        == f"cannot reach 127.0.0.1:{port}: Connection refused"
    )
    assert "HF_ENDPOINT" in (probe_hub("huggingface.co", timeout_s=1) or "")


def test_demo_without_a_terminal_never_prompts_nor_probes(
    demo_env: dict[str, Any], hub: StandInHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)

    class Trained(Exception):
        pass

    import cli.models_cmd

    def build_missing(settings: Settings) -> None:
        raise Trained

    probes: list[str] = []
    monkeypatch.setattr(cli.models_cmd, "build_missing", build_missing)
    monkeypatch.setattr(cli.models_cmd, "probe_hub", lambda endpoint, timeout_s: probes.append(endpoint))
    result = run_demo("--scenes", "1", "--out", str(tmp_path / "out"), input="y\n")
    assert isinstance(result.exception, Trained), result.output
    assert probes == [] and hub.requests == []  # not even a probe: the offline path is as fast as before
    assert "Download the community models" not in result.output


@pytest.mark.parametrize("answer", ["n", "y"])
def test_demo_on_a_terminal_asks_before_training(
    answer: str,
    demo_env: dict[str, Any],
    hub: StandInHub,
    community: dict[str, dict[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import cli.models_cmd

    serve(hub, community)
    demo_env["catalog"].write_text(json.dumps(catalogue_data(community)))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setattr(cli.models_cmd, "stdin_is_terminal", lambda: True)

    class Trained(Exception):
        pass

    def build_missing(settings: Settings) -> None:
        from core.learning.starter.build import missing_slots

        demo_env["trained"] = missing_slots(settings)
        raise Trained

    monkeypatch.setattr(cli.models_cmd, "build_missing", build_missing)
    args = ("--catalog", str(demo_env["catalog"]), "--scenes", "1", "--out", str(tmp_path / "out"))
    result = run_demo(*args, input=f"{answer}\n")

    assert isinstance(result.exception, Trained), result.output
    assert (
        "No detector, embedder, tagger model yet. Download the community models recommended" in result.output
    )
    if answer == "n":
        assert read_active(tmp_path / "models") == {}
        assert demo_env["trained"] == ["detector", "embedder", "tagger", "captioner"]
    else:
        assert read_active(tmp_path / "models") == NAMES
        assert demo_env["trained"] == ["captioner"]


def test_a_model_that_fails_to_download_is_said_in_one_line_and_trained(
    demo_env: dict[str, Any],
    hub: StandInHub,
    community: dict[str, dict[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import cli.models_cmd

    serve(hub, {slot: files for slot, files in community.items() if slot != "tagger"})  # the tagger: HTTP 404
    demo_env["catalog"].write_text(json.dumps(catalogue_data(community)))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)

    class Trained(Exception):
        pass

    def build_missing(settings: Settings) -> None:
        from core.learning.starter.build import missing_slots

        demo_env["trained"] = missing_slots(settings)
        raise Trained

    monkeypatch.setattr(cli.models_cmd, "build_missing", build_missing)
    result = run_demo("--pull", "--catalog", str(demo_env["catalog"]), "--out", str(tmp_path / "out"))

    assert isinstance(result.exception, Trained), result.output
    failed = [line for line in result.stderr.splitlines() if "was not installed" in line]
    assert len(failed) == 1 and failed[0].startswith(f"{NAMES['tagger']} was not installed (")
    assert "HTTP 404" in failed[0] and failed[0].endswith("the starter tagger is trained instead.")
    assert read_active(tmp_path / "models") == {"detector": NAMES["detector"], "embedder": NAMES["embedder"]}
    assert demo_env["trained"] == ["tagger", "captioner"]
    assert not (tmp_path / "models" / "tagger").exists() and not (tmp_path / "models" / ".staging").exists()
