"""Extra-network metadata: A1111's ``<model>.json`` sidecar, kohya ``ss_*`` training metadata and a LoRA card's text."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from modules.app_state import create_state
from modules.cmd_args import parse_command_line
from modules.models.safetensors_file import read_header
from modules.networks.user_metadata import (
    UserMetadata,
    UserMetadataError,
    lora_card_text,
    read_user_metadata,
    sidecar_path,
    training_summary,
    write_user_metadata,
)
from webui.extra_networks import toggle_in_prompt, toggle_negative

TAGS = {"10_cat": {f"tag{i:02d}": 100 - i for i in range(30)}, "5_dog": {" tag29 ": 200, "dog": "7", "bad": None}}
KOHYA = {
    "ss_output_name": "catstyle",
    "ss_sd_model_name": "v1-5-pruned.safetensors",
    "ss_network_module": "networks.lora",
    "ss_network_dim": "8",
    "ss_network_alpha": "4.0",
    "ss_clip_skip": "None",
    "ss_num_epochs": "10",
    "ss_steps": "1500",
    "ss_training_started_at": "1700000000.5",
    "ss_tag_frequency": json.dumps(TAGS),
    "ss_dataset_dirs": json.dumps({"10_cat": {"n_repeats": 10, "img_count": 12}, "5_dog": {"img_count": 3}}),
    "ss_bucket_info": json.dumps({"buckets": {
        "0": {"resolution": [512, 768], "count": 9}, "1": {"resolution": [512, 512], "count": 20}}}),
}


def write_lora(path, metadata):
    save_file({"lora_te_x.lora_down.weight": torch.zeros(2, 4), "lora_te_x.lora_up.weight": torch.zeros(4, 2)},
              str(path), metadata=metadata)
    return path


def test_sidecar_is_a1111s_json_beside_the_model_keeps_unknown_keys_and_refuses_bad_values(tmp_path):
    model = write_lora(tmp_path / "cat.v2.safetensors", {})
    assert read_user_metadata(model) == UserMetadata()  # no sidecar yet
    sidecar = tmp_path / "cat.v2.json"
    sidecar.write_text(json.dumps({"description": "old", "preferred weight": "0.8", "notes": 5,
                                   "my extension": {"pinned": True}}), encoding="utf-8")  # as others write it
    meta = read_user_metadata(model)
    assert (meta.description, meta.preferred_weight, meta.notes) == ("old", 0.8, "")  # the bad "notes" ignored
    saved = write_user_metadata(model, replace(meta, activation_text="cat ears", preferred_weight=0.7,
                                               sd_version="SD1"))
    assert saved == sidecar_path(model) == sidecar
    assert json.loads(sidecar.read_text(encoding="utf-8")) == {
        "my extension": {"pinned": True}, "description": "old", "activation text": "cat ears",
        "negative text": "", "notes": "", "sd version": "SD1", "preferred weight": 0.7}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.v2.json", "cat.v2.safetensors"]  # no temp file left

    for bad, field in [({"preferred_weight": 2.5}, "preferred weight"), ({"preferred_weight": float("nan")},
                       "preferred weight"), ({"sd_version": "SD9"}, "sd version"), ({"notes": 3}, "notes")]:
        with pytest.raises(UserMetadataError, match=field):
            write_user_metadata(model, UserMetadata(**bad))
    assert read_user_metadata(model).activation_text == "cat ears"  # a refused save left the file alone

    sidecar.write_text("{not json", encoding="utf-8")
    with pytest.raises(UserMetadataError, match="cat.v2.json"):
        read_user_metadata(model)


def test_training_summary_from_the_header_shows_a1111s_fields_and_the_top_20_tags(tmp_path):
    header = read_header(write_lora(tmp_path / "cat.safetensors", KOHYA))
    summary = training_summary(header.metadata)
    rows = dict(summary.rows)
    assert rows["Output name"] == "catstyle" and rows["Model"] == "v1-5-pruned.safetensors"
    assert (rows["Network dim"], rows["Network alpha"], rows["Epochs"], rows["Steps"]) == ("8", "4.0", "10", "1500")
    assert "Clip skip" not in rows  # kohya writes "None" when it was not set
    assert rows["Date trained"] == "2023-11-14 22:13 UTC"
    assert rows["Resolution"] == "512×512, 512×768"  # most images first
    assert rows["Dataset size"] == "15 images"
    assert rows["Dataset folders"] == "10_cat (12 images × 10), 5_dog (3 images)"
    assert len(summary.tags) == 20
    assert summary.tags[:3] == (("tag29", 271), ("tag00", 100), ("tag01", 99))  # summed over folders, stripped
    assert ("dog", 7) not in summary.tags  # a count of 7 ranks below the top 20

    broken = {"ss_tag_frequency": "{" * 100_000, "ss_dataset_dirs": "[1, 2]", "ss_bucket_info": '{"buckets": 3}',
              "ss_training_started_at": "soon", "ss_resolution": "(640, 480)"}
    header = read_header(write_lora(tmp_path / "odd.safetensors", broken))
    assert training_summary(header.metadata) == training_summary({"ss_resolution": "(640, 480)"})
    assert dict(training_summary(header.metadata).rows) == {"Resolution": "640×480"}


def test_lora_card_inserts_preferred_weight_and_activation_text_and_a_second_click_takes_them_out():
    card = lora_card_text("cat", UserMetadata(activation_text=" cat ears ", preferred_weight=0.7,
                                              negative_text="dog"))
    prompt = toggle_in_prompt("a photo", "lora", "cat", card)
    assert prompt == "a photo <lora:cat:0.7> cat ears"
    assert toggle_negative("blurry", card.negative, remove=False) == "blurry dog"
    assert toggle_in_prompt(prompt + ", smiling", "lora", "cat", card) == "a photo, smiling"
    assert toggle_negative("blurry dog", card.negative, remove=True) == "blurry"
    assert lora_card_text("cat", UserMetadata()).prompt == "<lora:cat:1>"  # weight 0 = the default


def test_api_loras_carry_the_header_metadata_with_json_fields_parsed_as_a1111(tmp_path):
    lora_dir = tmp_path / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    write_lora(lora_dir / "cat.safetensors", KOHYA)
    args = ["--ckpt-dir", str(tmp_path / "ckpt"), "--data-dir", str(tmp_path / "data"), "--lora-dir", str(lora_dir),
            "--embeddings-dir", str(tmp_path / "emb"), "--device", "cpu", "--precision", "full"]
    from modules.api.routes import build_router

    app = FastAPI()
    app.include_router(build_router(create_state(parse_command_line(args).options)))
    [entry] = TestClient(app).get("/sdapi/v1/loras").json()
    assert entry["name"] == "cat" and entry["alias"] == "catstyle"
    assert entry["metadata"]["ss_tag_frequency"]["5_dog"]["dog"] == "7"  # an object, not a JSON string
    assert entry["metadata"]["ss_steps"] == "1500"
