"""Readers of VALSE, SugarCrepe, Winoground, ARO and the Salin et al. probing csv files: invented fixtures in each
official layout (always), and the real excerpts in ../shared/benchmark-samples (when that folder is there)."""

import csv
import glob
import json
import os

import pytest
import repo_paths
from conftest import BENCHMARK_SAMPLES

from vlp.processing.readers.benchmarks import (
    FAILED_VALIDATION,
    MISSING_IMAGE,
    FoilItem,
    ProbeItem,
    WinogroundItem,
    probing_task,
    read_aro,
    read_probing_csv,
    read_sugarcrepe,
    read_valse,
    read_winoground,
)

FIXTURES = os.path.join(repo_paths.FIXTURES, "benchmarks")
SAMPLES = os.path.abspath(BENCHMARK_SAMPLES)
needs_samples = pytest.mark.skipif(not os.path.isdir(SAMPLES), reason="benchmark-samples folder not present")


def fixture(name):
    return os.path.join(FIXTURES, name)


def make_images(folder, *names):
    """Empty files stand in for images: the readers check that an image exists, they do not decode it."""
    os.makedirs(folder, exist_ok=True)
    for name in names:
        open(os.path.join(folder, name), "wb").close()
    return str(folder)


def reasons(result):
    return {entry.id: entry.reason.split(":")[0] for entry in result.skipped}


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=4)
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# VALSE
# ---------------------------------------------------------------------------------------------------------------


def test_valse_keeps_valid_samples_and_reports_the_rest(tmp_path):
    images = make_images(tmp_path, "v7w_9000001.jpg", "v7w_9000002.jpg", "v7w_9000003.jpg")
    result = read_valse(fixture("valse/existence.json"), images)
    assert [item.id for item in result.items] == ["existence_visual7w_9000001", "existence_visual7w_9000002"]
    assert reasons(result) == {
        "existence_visual7w_9000003": FAILED_VALIDATION,  # mturk caption votes 1
        "existence_visual7w_9000004": MISSING_IMAGE,
    }
    item = result.items[1]
    assert isinstance(item, FoilItem)
    assert item.caption == "There is a café sign." and item.foils == ["There is no café sign."]  # \u00e9 decoded
    assert item.image_path == os.path.join(images, "v7w_9000002.jpg")
    assert (item.phenomenon, item.source, item.meta["piece"]) == ("existence", "valse", "existence")
    assert item.meta["mturk"] == {"foil": 0, "caption": 2, "other": 1} and item.meta["classes_foil"] == [0]
    assert "caption" not in item.meta and "foil" not in item.meta


def test_valse_keep_all_and_text_only(tmp_path):
    everything = read_valse(fixture("valse/existence.json"), str(tmp_path), only_valid=False, require_images=False)
    assert len(everything) == 4 and not everything.skipped
    relations = read_valse(fixture("valse/relations.json"), str(tmp_path), require_images=False)
    # votes 3 (kept), 1 (skipped), 2 (kept: the valid set is caption votes >= 2)
    assert [item.id for item in relations.items] == ["relations:coco_2017:700001", "relations:coco_2017:700003"]
    assert relations.items[0].meta["nli_scores"]["pred"] == ["contradict"]
    assert relations.items[0].meta["key"] == relations.items[0].id
    assert "2 items, 1 skipped (1 failed validation)" in relations.summary()


def test_valse_malformed_records_name_the_file_and_record(tmp_path):
    with open(fixture("valse/existence.json"), encoding="utf-8") as handle:
        data = json.load(handle)
    del data["existence_visual7w_9000002"]["foil"]
    path = write_json(tmp_path / "existence.json", data)
    with pytest.raises(ValueError, match=r"existence\.json: record 'existence_visual7w_9000002': missing field 'foil'"):
        read_valse(path, str(tmp_path), require_images=False)
    data = {"x": {"image_file": "a.jpg", "caption": "a", "foil": "b", "mturk": {"caption": "3"}}}
    with pytest.raises(ValueError, match=r"record 'x': field 'caption' should be int"):
        read_valse(write_json(tmp_path / "votes.json", data), str(tmp_path), require_images=False)
    with pytest.raises(ValueError, match=r"list\.json: expected a JSON object keyed by sample id"):
        read_valse(write_json(tmp_path / "list.json", [1, 2]), str(tmp_path))
    (tmp_path / "broken.json").write_text('{"a": {"caption": "x",}}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON .* line 1"):
        read_valse(str(tmp_path / "broken.json"), str(tmp_path))
    (tmp_path / "twice.json").write_text('{"a": {}, "a": {}}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"twice\.json: key 'a' appears twice"):
        read_valse(str(tmp_path / "twice.json"), str(tmp_path))
    with pytest.raises(ValueError, match="file not found"):
        read_valse(str(tmp_path / "absent.json"), str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# SugarCrepe
# ---------------------------------------------------------------------------------------------------------------


def test_sugarcrepe(tmp_path):
    images = make_images(tmp_path, "000000800001.jpg", "000000800003.jpg")
    result = read_sugarcrepe(fixture("sugarcrepe/swap_att.json"), images)
    assert [item.id for item in result.items] == ["0", "2"] and reasons(result) == {"1": MISSING_IMAGE}
    item = result.items[0]
    assert item.caption == "A red car parked next to a blue truck."
    assert item.foils == ["A blue car parked next to a red truck."]
    assert (item.phenomenon, item.source, item.meta["subset"]) == ("swap_att", "sugarcrepe", "swap_att")
    with pytest.raises(ValueError, match=r"record '0': missing field 'negative_caption'"):
        read_sugarcrepe(write_json(tmp_path / "bad.json", {"0": {"filename": "a.jpg", "caption": "c"}}), images)


# ---------------------------------------------------------------------------------------------------------------
# Winoground
# ---------------------------------------------------------------------------------------------------------------


def test_winoground(tmp_path):
    images = make_images(tmp_path, *(f"ex_{k}_img_{i}.png" for k in range(3) for i in range(2) if (k, i) != (2, 1)))
    result = read_winoground(fixture("winoground/examples.jsonl"), images)
    assert [item.id for item in result.items] == ["0", "1"]
    assert reasons(result) == {"2": MISSING_IMAGE} and "ex_2_img_1.png" in result.skipped[0].reason
    item = result.items[1]
    assert isinstance(item, WinogroundItem)
    assert item.image_paths == [os.path.join(images, "ex_1_img_0.png"), os.path.join(images, "ex_1_img_1.png")]
    assert item.captions == ["the red cup is left of the green one", "the green cup is left of the red one"]
    assert (item.tag, item.secondary_tag, item.num_main_preds, item.collapsed_tag) == (
        "Relation",
        "Symbolic",
        2,
        "Relation",
    )
    assert result.items[0].secondary_tag == ""


def test_winoground_malformed_lines(tmp_path):
    with open(fixture("winoground/examples.jsonl"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    record = json.loads(lines[1])
    del record["caption_1"]
    (tmp_path / "missing.jsonl").write_text("\n".join([lines[0], json.dumps(record), ""]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"missing\.jsonl: record '1 \(line 2\)': missing field 'caption_1'"):
        read_winoground(str(tmp_path / "missing.jsonl"), str(tmp_path), require_images=False)
    (tmp_path / "broken.jsonl").write_text(lines[0] + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.jsonl: line 2: not valid JSON"):
        read_winoground(str(tmp_path / "broken.jsonl"), str(tmp_path), require_images=False)


# ---------------------------------------------------------------------------------------------------------------
# ARO
# ---------------------------------------------------------------------------------------------------------------


def test_aro_relation_and_attribution(tmp_path):
    images = make_images(tmp_path, "7100001.jpg", "7100002.jpg", "7200002.jpg")
    relation = read_aro(fixture("aro/visual_genome_relation.json"), images)
    assert [item.id for item in relation.items] == ["0", "1"] and not relation.skipped
    item = relation.items[1]
    assert (item.caption, item.foils) == ("the girl is holding the umbrella", ["the umbrella is holding the girl"])
    assert item.phenomenon == "vg_relation" and item.meta["relation_name"] == "is holding"
    assert item.meta["bbox"] == (0.0, 5.5, 320.0, 240.0) and item.meta["image_id"] == "7100002"
    attribution = read_aro(fixture("aro/visual_genome_attribution.json"), images)
    assert [item.id for item in attribution.items] == ["1"] and reasons(attribution) == {"0": MISSING_IMAGE}
    assert attribution.items[0].phenomenon == "vg_attribution"
    assert attribution.items[0].meta["attributes"] == ["black", "open"]


def test_aro_malformed_records(tmp_path):
    with open(fixture("aro/visual_genome_relation.json"), encoding="utf-8") as handle:
        data = json.load(handle)
    del data[1]["relation_name"]
    with pytest.raises(ValueError, match=r"record '1': missing field 'relation_name' \(VG-Relation\) or 'attributes'"):
        read_aro(write_json(tmp_path / "no_relation.json", data), str(tmp_path), require_images=False)
    data[1]["relation_name"], data[0]["bbox_w"] = "is on", "wide"
    with pytest.raises(ValueError, match=r"bad_box\.json: record '0': field 'bbox_w' should be int or float"):
        read_aro(write_json(tmp_path / "bad_box.json", data), str(tmp_path), require_images=False)
    with pytest.raises(ValueError, match="expected a JSON list of ARO records"):
        read_aro(write_json(tmp_path / "object.json", {"0": data[1]}), str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# Salin et al. probing csv
# ---------------------------------------------------------------------------------------------------------------


def _naive_rows(path):
    """Data rows by a plain split on '|' of each CRLF line (what the csv module is compared against)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return [line.split("|") for line in handle.read().split("\r\n")[1:] if line]


def test_probing_csv_quoting(tmp_path):
    names = ["1000000001.jpg", "1000000002.jpg", "1000000003.jpg", "1000000004.jpg"]
    result = read_probing_csv(fixture("vlm-probing/flickr_3000_colors.csv"), make_images(tmp_path, *names))
    assert [item.id for item in result.items] == ["1", "2", "3", "4"] and not result.skipped
    plain, quoted, literal, last = result.items
    assert isinstance(plain, ProbeItem) and plain.task == "color" and plain.source == "vlm-probing"
    assert (plain.text, plain.target) == (" A child in a [MASK] coat walks a dog .", "red")  # leading space kept
    # a field that begins with a quote is a CSV-quoted field: enclosing quotes dropped, "" -> "
    assert quoted.text == ' A shop sign reads " OPEN LATE " above a [MASK] door .'
    assert quoted.original == ' A shop sign reads " OPEN LATE " above a blue door .'
    # "" inside a field that does not begin with a quote stays as written
    assert literal.text == ' Two kids hold up "" GO TEAM "" signs near a [MASK] bus .'
    assert last.meta == {"comment_number": "1", "line": 5} and last.target == "green"
    assert not any("\r" in item.text or "\r" in item.target for item in result.items)
    verbatim = read_probing_csv(fixture("vlm-probing/flickr_3000_colors.csv"), str(tmp_path), unquote=False)
    naive = _naive_rows(fixture("vlm-probing/flickr_3000_colors.csv"))
    assert [[item.text, item.original, item.target] for item in verbatim.items] == [row[2:] for row in naive]


def test_probing_csv_quoted_more_than_once_loses_one_level(tmp_path):
    result = read_probing_csv(fixture("vlm-probing/flickr_3000_pos.csv"), str(tmp_path), require_images=False)
    assert result.items[1].text == '" A dog sleeps under a banner that says "" home sweet home . """'
    assert [item.target for item in result.items] == ["1", "0", "1"] and result.items[0].task == "position"


def test_probing_csv_coco_names_and_missing_images(tmp_path):
    images = make_images(tmp_path, "COCO_val2014_000000000001.jpg", "coco_val2014_000000000003.jpg")
    result = read_probing_csv(fixture("vlm-probing/coco_uniter.csv"), images)
    assert [item.id for item in result.items] == ["1", "3"] and reasons(result) == {"2": MISSING_IMAGE}
    assert result.items[0].image_path == os.path.join(images, "COCO_val2014_000000000001.jpg")  # COCO's spelling
    assert result.items[1].image_path == os.path.join(images, "coco_val2014_000000000003.jpg")
    assert result.items[0].task == "object_count" and result.items[0].target == "3"
    text_only = read_probing_csv(fixture("vlm-probing/coco_uniter.csv"), images, require_images=False)
    assert text_only.items[1].text == 'A sign that says " slow " near two cars'


def test_probing_csv_malformed(tmp_path):
    source = fixture("vlm-probing/flickr_3000_colors.csv")
    with open(source, encoding="utf-8", newline="") as handle:
        lines = handle.read().split("\r\n")
    bad = tmp_path / "flickr_3000_colors.csv"
    bad.write_bytes("\r\n".join(lines[:3] + ["1000000009.jpg|0| only three fields"] + lines[3:]).encode())
    with pytest.raises(ValueError, match=r"flickr_3000_colors\.csv: row 3 \(line 4\): expected 5 '\|'-separated"):
        read_probing_csv(str(bad), str(tmp_path), require_images=False)
    bad.write_bytes("\r\n".join(["image|comment|target"] + lines[1:]).encode())
    with pytest.raises(ValueError, match=r"line 1: expected the header"):
        read_probing_csv(str(bad), str(tmp_path), require_images=False)


def test_probing_task_names():
    assert probing_task("datasets/flickr_3000_bshift.csv") == "bigram_shift"
    assert probing_task("coco_altercap_uniter_train.csv") == "altered_caption"
    assert probing_task("my_own_task.csv") == "my_own_task"


# ---------------------------------------------------------------------------------------------------------------
# The real excerpts (../shared/benchmark-samples; see its README for the counts)
# ---------------------------------------------------------------------------------------------------------------

# kept records (README table) and validated ones (mturk caption votes >= 2, counted in each excerpt)
VALSE_COUNTS = {
    "existence": (10, 9),
    "plurals": (11, 10),
    "counting-hard": (10, 8),
    "relations": (11, 10),
    "action-replacement": (10, 9),
    "coreference-standard": (10, 6),
    "foil-it": (10, 9),
}


@needs_samples
@pytest.mark.parametrize("piece", sorted(VALSE_COUNTS))
def test_real_valse_excerpts(piece, tmp_path):
    path = os.path.join(SAMPLES, "valse", f"{piece}.json")
    kept, valid = VALSE_COUNTS[piece]
    assert len(read_valse(path, str(tmp_path), only_valid=False, require_images=False)) == kept
    result = read_valse(path, str(tmp_path), require_images=False)
    assert len(result) == valid and len(result.skipped) == kept - valid >= 1
    assert all(entry.reason.startswith(FAILED_VALIDATION) for entry in result.skipped)
    assert all(item.meta["mturk"]["caption"] >= 2 and len(item.foils) == 1 for item in result.items)
    with_images = read_valse(path, str(tmp_path))  # no image is there: every valid sample is reported, none fatal
    assert not with_images.items and len(with_images.skipped) == kept


@needs_samples
def test_real_valse_details(tmp_path):
    coreference = read_valse(
        os.path.join(SAMPLES, "valse", "coreference-standard.json"), str(tmp_path), require_images=False
    )
    first = coreference.items[0]
    assert first.id == "coref_train_528" and first.image_path.endswith("COCO_train2014_000000254009.jpg")
    assert first.caption.endswith("is this picture in color? yes.") and first.foils[0].endswith("color? no.")
    assert first.phenomenon == "coreference-standard" and first.meta["linguistic_phenomena"] == "coreference"
    plurals = read_valse(os.path.join(SAMPLES, "valse", "plurals.json"), str(tmp_path), require_images=False)
    assert plurals.items[0].id.startswith("plurals:") and "orig_caption" in plurals.items[0].meta


@needs_samples
def test_real_sugarcrepe_excerpts(tmp_path):
    files = sorted(glob.glob(os.path.join(SAMPLES, "sugarcrepe", "*.json")))
    assert len(files) == 7
    for path in files:
        result = read_sugarcrepe(path, str(tmp_path), require_images=False)
        assert [item.id for item in result.items] == [str(k) for k in range(10)] and not result.skipped
        assert all(item.image_path.endswith(".jpg") and item.foils[0] != item.caption for item in result.items)
    add_att = read_sugarcrepe(os.path.join(SAMPLES, "sugarcrepe", "add_att.json"), str(tmp_path), require_images=False)
    assert add_att.items[0].caption == "A drawing of a young woman with many facial piercings."
    assert add_att.items[0].foils == ["A drawing of a tattooed young woman with many facial piercings."]
    assert len(read_sugarcrepe(os.path.join(SAMPLES, "sugarcrepe", "add_att.json"), str(tmp_path)).skipped) == 10


PROBING_ROWS = {  # data rows in each excerpt (README table)
    "flickr_3000_colors": 21,
    "flickr_3000_size": 20,
    "flickr_3000_pos": 21,
    "flickr_3000_bshift": 20,
    "coco_uniter": 21,
    "coco_altercap_uniter_train": 20,
}


@needs_samples
@pytest.mark.parametrize("name", sorted(PROBING_ROWS))
def test_real_probing_excerpts(name, tmp_path):
    path = os.path.join(SAMPLES, "vlm-probing", f"{name}.csv")
    result = read_probing_csv(path, str(tmp_path), require_images=False)
    assert len(result) == PROBING_ROWS[name] and not result.skipped
    assert not any("\r" in item.target for item in result.items)
    verbatim = read_probing_csv(path, str(tmp_path), require_images=False, unquote=False)
    assert [[item.text, item.original, item.target] for item in verbatim.items] == [r[2:] for r in _naive_rows(path)]
    with open(path, encoding="utf-8", newline="") as handle:  # the csv module's reading, independently
        expected = list(csv.reader(handle, delimiter="|"))[1:]
    assert [[item.text, item.original, item.target] for item in result.items] == [row[2:] for row in expected]
    assert len(read_probing_csv(path, str(tmp_path)).skipped) == PROBING_ROWS[name]  # no images: skipped, not fatal


@needs_samples
def test_real_probing_quoted_rows(tmp_path):
    def row(name, number):
        result = read_probing_csv(
            os.path.join(SAMPLES, "vlm-probing", f"{name}.csv"), str(tmp_path), require_images=False
        )
        return result.items[number - 1]

    colors = row("flickr_3000_colors", 21)  # data row 283 of the original file
    assert colors.text == ' Older woman in [MASK] jacket , holds sign saying " DOWN AND OUT " in urban area .'
    assert colors.target == "yellow"
    coco = row("coco_uniter", 21)
    assert coco.text == 'An intersection with a sign reading " center of the universe "' and coco.target == "6"
    pos = row("flickr_3000_pos", 21)  # quoted more than once: one level decoded
    assert pos.text.startswith('" Woman in trench coat') and pos.text.endswith('next to normal . """')
    assert pos.target == "1"
    assert row("flickr_3000_bshift", 8).text == ' Three women in elaborate costumes hold up "" I Love You "" cards .'
    assert row("flickr_3000_size", 13).text.startswith('" A large group of protesters')


def test_fixtures_keep_the_official_layouts():
    """The fixtures reproduce the quirks the readers must cope with (so the tests above exercise them)."""
    with open(fixture("valse/existence.json"), encoding="utf-8") as handle:
        text = handle.read()
    assert text.startswith('{\n    "existence_visual7w_9000001": {\n        "dataset"') and not text.endswith("\n")
    assert "\\u00e9" in text  # ensure_ascii escapes, as the coreference piece
    with open(fixture("vlm-probing/flickr_3000_colors.csv"), "rb") as handle:
        raw = handle.read()
    assert raw.count(b"\r\n") == 5 and raw.endswith(b"\r\n") and b'|" A shop' in raw
    with open(fixture("aro/visual_genome_relation.json"), encoding="utf-8") as handle:
        assert isinstance(json.load(handle), list)
