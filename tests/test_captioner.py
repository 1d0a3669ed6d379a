"""The captioner slot: the ``from_pretrained`` loader (VisionEncoderDecoder and BLIP stand-ins), grounding in the
heads and tags, the starter captioner's training entry point and the caption evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from core.datasets.synth import CAST, CAST_BY_KEY, render_scene
from core.evaluation.captioning import SceneTruth, evaluate_captioner, judge, write_plot
from core.settings import Settings
from core.vision.caption_claims import parse_caption
from core.vision.grounding import ground_caption, trusted_kinds
from core.vision.results import UNKNOWN, Tag
from core.vision.slots.base import IdentifiedHead, Manifest, file_sha256
from core.vision.slots.captioner import GroundedTemplateCaptioner, template_caption
from core.vision.slots.registry import BUILTIN, active_manifest, load_slot, set_active

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SETTINGS = Settings(device="cpu", onnx_threads=1)
NAMES = [c.name for c in CAST]
WORDS = [
    "[PAD]", "[BOS]", "[EOS]", "[UNK]", "One", "Two", "girl", "girls", ":", ",", ".", "with", "and", "long",
    "short", "hair", "eyes", "blue", "red", "pink", "green", "smiling", "calm", "in", "front", "of", "a",
    "sky", "room", "background", "Aoi", "Sakuragi", "Momo", "Haruno",
]  # fmt: skip


def general(*names: str) -> list[Tag]:
    return [Tag(n, 0.9, "general") for n in names]


def heads(*names: str) -> list[IdentifiedHead]:
    return [IdentifiedHead(n, 0.9) for n in names]


# --- stand-in from_pretrained folders -------------------------------------------------------------


def word_tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]"
    )


def vision_encoder_decoder_folder(folder: Path) -> Path:
    """A tiny random ViT + GPT-2 saved with save_pretrained, with a 48 px image processor."""
    torch.manual_seed(0)
    encoder = transformers.ViTConfig(
        image_size=48, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    decoder = transformers.GPT2Config(
        vocab_size=len(WORDS), n_positions=32, n_embd=32, n_layer=1, n_head=2, add_cross_attention=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 2
    model = transformers.VisionEncoderDecoderModel(config=config)
    model.generation_config.decoder_start_token_id = 1
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    model.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 48, "width": 48}).save_pretrained(folder)
    return folder


def blip_folder(folder: Path) -> Path:
    """A tiny random BLIP captioner saved with save_pretrained, without a preprocessor config."""
    torch.manual_seed(0)
    config = transformers.BlipConfig(
        vision_config={
            "image_size": 32, "patch_size": 16, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2,
        },
        text_config={
            "vocab_size": len(WORDS), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "encoder_hidden_size": 32, "max_position_embeddings": 32,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "sep_token_id": 2,
        },
    )  # fmt: skip
    transformers.BlipForConditionalGeneration(config).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def hf_manifest(folder: Path, fmt: str) -> Manifest:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return Manifest(
        slot="captioner",
        name="stand-in",
        format=fmt,
        files={"pretrained": "."},
        sha256={p.name: file_sha256(p) for p in files},
        extra={"names": ["Aoi Sakuragi", "Momo Haruno"], "max_new_tokens": 12},
        folder=folder,
    )


@pytest.mark.parametrize(
    ("make", "fmt", "architecture"),
    [
        (vision_encoder_decoder_folder, "hf-vision-encoder-decoder", "vision-encoder-decoder"),
        (blip_folder, "hf-blip", "blip"),
    ],
)
def test_from_pretrained_folder_loads_through_the_registry(tmp_path, make, fmt, architecture):
    manifest = hf_manifest(make(tmp_path), fmt)
    captioner = load_slot(manifest, SETTINGS)
    assert captioner.architecture == architecture
    assert captioner.version == manifest.version
    image = render_scene(3, characters=["aoi"]).image
    raw = captioner.raw_caption(image)
    assert isinstance(raw, str)
    assert len(raw.split()) <= 12 + 1  # max_new_tokens from the manifest bounds the generation
    caption = captioner.caption(image, heads("Aoi Sakuragi"), general("blue_hair", "blue_eyes", "1girl"))
    assert caption.startswith("Aoi Sakuragi") and "blue hair" in caption
    assert "Momo Haruno" not in caption
    for colour in ("red", "pink", "green"):
        assert f"{colour} hair" not in caption


def test_folder_of_another_model_type_is_refused_with_the_supported_ones(tmp_path):
    from core.vision.slots.hf_captioner import detect_architecture

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match="vision-encoder-decoder"):
        detect_architecture(tmp_path)


def test_builtin_template_stays_the_fallback_and_can_be_chosen_by_name(tmp_path):
    assert active_manifest(tmp_path, "captioner") == BUILTIN["captioner"]
    set_active(tmp_path, "captioner", "grounded-template")
    assert active_manifest(tmp_path, "captioner") == BUILTIN["captioner"]
    from core.learning.starter.build import missing_slots

    assert "captioner" in missing_slots(Settings(models_dir=tmp_path))


# --- grounding ------------------------------------------------------------------------------------


def test_colours_the_tags_do_not_support_are_replaced_by_the_tagged_ones():
    raw = "One girl: Aoi Sakuragi with long red hair and green eyes, smiling, in front of a sky background."
    caption = ground_caption(
        raw, heads("Aoi Sakuragi"), general("blue_hair", "blue_eyes", "long_hair", "smile")
    )
    assert caption is not None
    claims = parse_caption(caption, known_names=NAMES)
    assert claims.mentions[0].hair_colours == ("blue",) and claims.mentions[0].eye_colours == ("blue",)
    assert "red" not in caption and "green" not in caption
    assert "smiling" in caption and "in front of a sky background" in caption  # supported parts stay


def test_a_name_that_was_not_identified_is_replaced_by_the_identified_one():
    raw = "One girl: Rin Kurosawa with long black hair and purple eyes, calm, in front of a room background."
    caption = ground_caption(
        raw, heads("Akane Hino"), general("red_hair", "yellow_eyes", "short_hair"), known_names=NAMES
    )
    assert caption is not None and caption.startswith("Akane Hino")
    assert "Rin" not in caption and "black" not in caption and "purple" not in caption
    assert "red hair" in caption and "yellow eyes" in caption


def test_an_unknown_head_is_an_unknown_character_and_no_cast_name_is_said():
    raw = "One girl: Aoi Sakuragi with long blue hair and blue eyes, smiling, in front of a sky background."
    caption = ground_caption(raw, heads(UNKNOWN), general("blue_hair", "blue_eyes"), known_names=NAMES)
    assert caption is not None and caption.startswith("An unknown character with")
    assert not any(name in caption for name in NAMES)


def test_the_count_is_the_number_of_heads_and_extra_people_are_dropped():
    raw = (
        "Three girls: Aoi Sakuragi with long blue hair and blue eyes, smiling, Momo Haruno with short pink hair "
        "and green eyes, calm and Rin Kurosawa with long black hair and purple eyes, calm, in front of a sky "
        "background."
    )
    tags = general("2girls", "blue_hair", "pink_hair", "blue_eyes", "green_eyes", "smile", "closed_mouth")
    caption = ground_caption(raw, heads("Momo Haruno", "Aoi Sakuragi"), tags, known_names=NAMES)
    assert caption is not None and caption.startswith("Two girls:")
    claims = parse_caption(caption, known_names=NAMES)
    assert [m.name for m in claims.mentions] == ["Aoi Sakuragi", "Momo Haruno"]  # the caption's order
    assert "Rin" not in caption and "black" not in caption
    assert claims.mentions[1].hair_colours == ("pink",) and claims.mentions[1].expressions == ("calm",)


def test_a_repeated_name_does_not_lend_its_look_to_another_character():
    raw = "Two girls: Aoi Sakuragi with long blue hair and blue eyes, smiling and Aoi Sakuragi with long blue hair"
    tags = general("2girls", "blue_hair", "pink_hair", "blue_eyes", "green_eyes", "long_hair", "short_hair")
    caption = ground_caption(raw, heads("Aoi Sakuragi", "Momo Haruno"), tags, known_names=NAMES)
    assert caption is not None
    momo = parse_caption(caption, known_names=NAMES).mentions[1]
    assert momo.name == "Momo Haruno" and "blue" not in momo.hair_colours and "long" not in momo.hair_lengths


def test_a_setting_the_tags_rule_out_is_dropped():
    raw = "Aoi Sakuragi with blue hair, in front of a sky background."
    assert "sky" in (ground_caption(raw, heads("Aoi Sakuragi"), general("blue_hair")) or "")
    caption = ground_caption(raw, heads("Aoi Sakuragi"), general("blue_hair", "indoors"))
    assert caption is not None and "sky" not in caption


def test_unusable_text_gives_none_and_the_captioner_says_the_template_sentence():
    assert ground_caption("[UNK] [UNK] and and", heads("Aoi Sakuragi"), general("blue_hair")) is None
    assert ground_caption("a girl with blue hair", [], general("blue_hair")) is None


def test_grounding_the_true_caption_keeps_every_attribute_right():
    for seed in range(40):
        scene = render_scene(seed)
        names = [CAST_BY_KEY[h.character].name for h in scene.heads]
        caption = ground_caption(
            scene.caption, heads(*reversed(names)), general(*scene.tags), known_names=NAMES
        )
        assert caption is not None
        assert set(judge(caption, SceneTruth.of(scene)).values()) == {"right"}, (scene.caption, caption)


# --- the judge ------------------------------------------------------------------------------------


def test_true_captions_are_right_and_template_captions_never_wrong():
    for seed in range(60):
        scene = render_scene(seed)
        truth = SceneTruth.of(scene)
        assert set(judge(scene.caption, truth).values()) == {"right"}, scene.caption
        names = heads(*(CAST_BY_KEY[h.character].name for h in scene.heads))
        template = template_caption(names, general(*scene.tags))
        assert "wrong" not in judge(template, truth).values(), template


def test_false_claims_are_judged_wrong():
    scene = render_scene(11, characters=["aoi", "momo"])
    truth = SceneTruth.of(scene)
    swapped = (
        scene.caption.replace("blue hair", "PINK")
        .replace("pink hair", "blue hair")
        .replace("PINK", "pink hair")
    )
    verdicts = judge(swapped, truth)
    assert verdicts["hair colour"] == "wrong" and verdicts["names"] == "right"
    assert judge(scene.caption.replace("Two girls", "Three girls"), truth)["count"] == "wrong"
    assert judge(scene.caption.replace("Momo Haruno", "Rin Kurosawa"), truth)["names"] == "wrong"
    other = next(b for b in ("sky", "room") if b != scene.background)
    assert (
        judge(scene.caption.replace(f"a {scene.background} ", f"a {other} "), truth)["background"] == "wrong"
    )
    assert judge(scene.caption.split(", in front of")[0], truth)["background"] == "missing"


def test_claims_of_an_untrusted_kind_are_not_taken_from_the_model():
    raw = "Two girls: Aoi Sakuragi with long blue hair and blue eyes, calm and Momo Haruno with pink hair, smiling"
    tags = general("2girls", "blue_hair", "pink_hair", "blue_eyes", "smile", "closed_mouth")
    both = heads("Aoi Sakuragi", "Momo Haruno")
    trusting = parse_caption(ground_caption(raw, both, tags) or "", known_names=NAMES)
    assert trusting.mentions[0].expressions == ("calm",) and trusting.mentions[1].expressions == ("smiling",)
    kinds = trusted_kinds({"expressions": 0.3, "hair_colours": 0.02}, 0.1)
    assert (
        "expressions" not in kinds and "hair_colours" in kinds and "setting" in kinds
    )  # unmeasured: trusted
    wary = parse_caption(ground_caption(raw, both, tags, trusted=kinds) or "", known_names=NAMES)
    assert [m.expressions for m in wary.mentions] == [(), ()]
    assert set(wary.group.expressions) == {
        "smiling",
        "calm",
    }  # the tags still say them, of nobody in particular
    assert wary.mentions[1].hair_colours == ("pink",)


# --- training and evaluation ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_captioner(tmp_path_factory) -> Manifest:
    from core.learning.starter.build import SMOKE_BUDGETS
    from core.learning.starter.captioner import train_starter_captioner

    out = tmp_path_factory.mktemp("captioner")
    seen: list[float] = []
    manifest = train_starter_captioner(
        out, seed=0, progress=lambda _m, f: seen.append(f), **SMOKE_BUDGETS["captioner"]
    )
    assert seen and seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen) and seen == sorted(seen)
    return manifest


def test_training_writes_a_loadable_folder_and_a_manifest(smoke_captioner):
    manifest = Manifest.load(smoke_captioner.folder)
    assert manifest.slot == "captioner" and manifest.format == "hf-vision-encoder-decoder"
    folder = manifest.path("pretrained")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (folder / name).is_file(), name
    for name, digest in manifest.sha256.items():
        assert file_sha256(manifest.folder / name) == digest
    for figures in (manifest.extra["raw"], manifest.extra["grounded"]):
        assert figures and all(0.0 <= v <= 1.0 for v in figures.values())
    captioner = load_slot(manifest, SETTINGS)
    caption = captioner.caption(render_scene(5).image, heads(UNKNOWN), general("pink_hair"))
    assert caption.startswith("An unknown character") and "pink hair" in caption


def test_evaluation_figures_are_shares_and_grounding_never_scores_below_raw(smoke_captioner, tmp_path):
    captioner = load_slot(Manifest.load(smoke_captioner.folder), SETTINGS)
    report = evaluate_captioner(captioner, n_scenes=6, seed_base=7_000_000)
    assert report.raw is not None and report.raw.n == report.grounded.n == 6
    for scores in (report.raw, report.grounded):
        assert 0.0 <= scores.complete_share <= scores.match_share <= 1.0
        assert all(
            0.0 <= scores.share(a, v) <= 1.0 for a in scores.counts for v in ("right", "wrong", "missing")
        )
    assert report.grounded.match_share >= report.raw.match_share
    assert report.grounded.share("names", "wrong") == 0.0 and report.grounded.share("count", "right") == 1.0
    markdown = report.markdown()
    assert "| raw (learned model) | 6 |" in markdown and "| grounded (what users see) | 6 |" in markdown
    plot = write_plot(report, tmp_path / "captioner.png")
    assert Image.open(plot).size[0] > 100


def test_eval_command_writes_the_table_and_the_plot(smoke_captioner, tmp_path, monkeypatch):
    import shutil

    from typer.testing import CliRunner

    from cli.main import app
    from core.settings import get_settings

    models = tmp_path / "models"
    shutil.copytree(smoke_captioner.folder, models / "captioner" / smoke_captioner.name)
    monkeypatch.setenv("ANIBOT_MODELS_DIR", str(models))
    get_settings.cache_clear()
    try:
        done = CliRunner().invoke(
            app, ["eval", "captioner", "--scenes", "3", "--out", str(tmp_path / "eval")]
        )
    finally:
        get_settings.cache_clear()
    assert done.exit_code == 0, done.output
    table = (tmp_path / "eval" / "captioner.md").read_text(encoding="utf-8")
    assert smoke_captioner.name in table and "| grounded (what users see) | 3 |" in table
    assert (tmp_path / "eval" / "captioner.png").stat().st_size > 1000


def test_template_captioner_is_evaluated_without_a_raw_row():
    report = evaluate_captioner(GroundedTemplateCaptioner(), n_scenes=4, seed_base=7_000_100)
    assert report.raw is None and report.grounded.n == 4 and report.grounded.match_share == 1.0
    assert "raw (learned model)" not in report.markdown()
